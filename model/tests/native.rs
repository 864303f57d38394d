//! The native stack links and runs: one tiny op through libtorch (tch) and one model through
//! ONNX Runtime (ort), with no environment variables exported.

use model::{device, onnx};
use ort::value::TensorRef;

#[test]
fn libtorch_runs_a_matmul() {
    let cpu = device::select(device::DevicePreference::Cpu).unwrap();
    let a = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
    let b = tch::Tensor::from_slice(&[5.0f32, 6.0, 7.0, 8.0]).reshape([2, 2]).to_device(cpu.device());
    let c = a.matmul(&b);
    let got: Vec<f32> = c.flatten(0, -1).try_into().unwrap();
    assert_eq!(got, vec![19.0, 22.0, 43.0, 50.0]);
}

#[test]
fn onnx_runtime_runs_a_model() {
    let bytes = include_bytes!("fixtures/scale_add.onnx");
    let mut session = onnx::load_session(bytes, 1).unwrap();
    let input = ndarray::Array2::<f32>::from_shape_vec((2, 4), vec![0., 1., 2., 3., -1., -2., 0.5, 10.]).unwrap();
    let outputs = session.run(ort::inputs![TensorRef::from_array_view(&input).unwrap()]).unwrap();
    let y = outputs["y"].try_extract_array::<f32>().unwrap();
    assert_eq!(y.shape(), &[2, 4]);
    let expected = [1., 3., 5., 7., -1., -3., 2., 21.];
    for (got, want) in y.iter().zip(expected) {
        assert_eq!(*got, want);
    }
}

#[test]
fn a_corrupt_onnx_model_is_an_error_not_a_crash() {
    let err = onnx::load_session(b"definitely not protobuf", 1).unwrap_err();
    assert!(err.to_string().contains("loading the model"), "{err}");
}
