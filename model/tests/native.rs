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

#[test]
fn onnx_sessions_run_where_asked_and_explain_when_they_cannot() {
    use model::device::DevicePreference;
    use model::onnx::OrtTarget;
    let bytes = include_bytes!("fixtures/scale_add.onnx");
    let (_, target) = onnx::load_session_on(bytes, 1, DevicePreference::Cpu).unwrap();
    assert_eq!(target, OrtTarget::Cpu);
    // Auto always gives a working session, on whatever the runtime offers.
    let (mut session, target) = onnx::load_session_on(bytes, 1, DevicePreference::Auto).unwrap();
    let input = ndarray::Array2::<f32>::from_shape_vec((1, 4), vec![0., 1., 2., 3.]).unwrap();
    let outputs = session.run(ort::inputs![TensorRef::from_array_view(&input).unwrap()]).unwrap();
    let y: Vec<f32> = outputs["y"].try_extract_array::<f32>().unwrap().iter().copied().collect();
    assert_eq!(y, vec![1., 3., 5., 7.]);
    if !onnx::cuda_provider_built().unwrap() {
        // The CPU build setup installs: auto falls back, an explicit GPU request is refused
        // with the way out.
        assert_eq!(target, OrtTarget::Cpu);
        let err = onnx::load_session_on(bytes, 1, DevicePreference::Cuda(0)).unwrap_err().to_string();
        assert!(
            err.contains("CUDA was requested") && err.contains("no CUDA execution provider") && err.contains("onnxruntime-gpu"),
            "{err}"
        );
    }
}

#[test]
fn the_reason_onnx_models_fall_back_to_the_cpu_is_kept_for_strata_info() {
    // Answers even when no session was loaded yet (it probes), so `strata info` can say it.
    let reason = onnx::cuda_fallback_reason().unwrap();
    if !onnx::cuda_provider_built().unwrap() {
        let reason = reason.expect("a CPU build always falls back");
        assert!(reason.contains("no CUDA execution provider") && reason.contains("onnxruntime-gpu"), "{reason}");
    }
    // Sessions placed with `auto` tell the same story.
    let bytes = include_bytes!("fixtures/scale_add.onnx");
    let (_, target) = onnx::load_session_on(bytes, 1, model::device::DevicePreference::Auto).unwrap();
    assert_eq!(onnx::cuda_fallback_reason().unwrap().is_some(), target == onnx::OrtTarget::Cpu);
}
