//! bf16 autocast: mixed-precision forward passes over f32 weights, as `torch.autocast(device,
//! dtype=torch.bfloat16)` runs them.
//!
//! Inside an [`Autocast`] scope libtorch's dispatcher runs the operators on its autocast list
//! (matrix products, linear layers, convolutions, attention) in bf16 and keeps the
//! precision-sensitive ones (softmax, norms, losses) in f32; the weights, their gradients and
//! the optimiser's moments stay f32 (the "master weights"). This is how the paper's models are
//! trained on GPUs, and it avoids AdamW on pure-bf16 weights, whose small updates round away.
//!
//! tch exposes `tch::autocast`, which switches CUDA autocast on with libtorch's default dtype,
//! fp16, and has no way to choose bf16 (fp16 would also need a gradient scaler). libtorch's own
//! C++ API (`at::autocast`, `ATen/autocast_mode.h`) has the setters; we call those five
//! functions directly. Their arguments are `c10::DeviceType` and `c10::ScalarType`, both
//! `enum class : int8_t`, and a `bool`, so their calling convention is the C one; only the
//! names are C++-mangled (Itanium ABI, as libtorch's Linux builds use).

use std::marker::PhantomData;

use tch::{Device, Kind};

/// libtorch's autocast state, linked through torch-sys.
mod ffi {
    // SAFETY (for every function here): libtorch ≥ 2.4 defines them with exactly these
    // signatures (`ATen/autocast_mode.h`); they touch only the calling thread's autocast state.
    extern "C" {
        #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
        pub fn is_autocast_enabled(device_type: i8) -> bool;
        #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
        pub fn set_autocast_enabled(device_type: i8, enabled: bool);
        #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
        pub fn get_autocast_dtype(device_type: i8) -> i8;
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        pub fn set_autocast_dtype(device_type: i8, dtype: i8);
        #[link_name = "_ZN2at8autocast17increment_nestingEv"]
        pub fn increment_nesting() -> i32;
        #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
        pub fn decrement_nesting() -> i32;
        #[link_name = "_ZN2at8autocast11clear_cacheEv"]
        pub fn clear_cache();
    }
}

/// `c10::DeviceType` values (`c10/core/DeviceType.h`).
const CPU: i8 = 0;
const CUDA: i8 = 1;

/// `c10::ScalarType` values (`c10/core/ScalarType.h`).
const HALF: i8 = 5;
const BFLOAT16: i8 = 15;

fn device_type(device: Device) -> i8 {
    match device {
        Device::Cuda(_) => CUDA,
        // MPS and Vulkan have no autocast in libtorch's C++ API here; their tensors are never
        // produced by `device::select`, so the CPU's state is the one to set.
        _ => CPU,
    }
}

/// A scope in which libtorch's autocast runs eligible operators on `device`'s type in bf16.
/// Dropping it restores the state before it (scopes nest, as `torch.autocast` does).
///
/// The state is the calling thread's, so the guard cannot leave the thread.
#[derive(Debug)]
pub struct Autocast {
    device_type: i8,
    was_enabled: bool,
    previous_dtype: i8,
    _not_send: PhantomData<*const ()>,
}

impl Autocast {
    /// Enters bf16 autocast for `device`'s type (CUDA or CPU).
    pub fn bf16(device: Device) -> Self {
        let device_type = device_type(device);
        // SAFETY: see `ffi`; each call only reads or writes this thread's autocast state.
        let (was_enabled, previous_dtype) = unsafe {
            let state = (ffi::is_autocast_enabled(device_type), ffi::get_autocast_dtype(device_type));
            ffi::set_autocast_dtype(device_type, BFLOAT16);
            ffi::set_autocast_enabled(device_type, true);
            ffi::increment_nesting();
            state
        };
        Self { device_type, was_enabled, previous_dtype, _not_send: PhantomData }
    }

    /// Whether autocast is on for `device`'s type on this thread, and in which dtype.
    pub fn state(device: Device) -> (bool, Kind) {
        let device_type = device_type(device);
        // SAFETY: see `ffi`.
        let (enabled, dtype) = unsafe { (ffi::is_autocast_enabled(device_type), ffi::get_autocast_dtype(device_type)) };
        let kind = match dtype {
            HALF => Kind::Half,
            BFLOAT16 => Kind::BFloat16,
            // f32, or a dtype autocast does not cast to.
            _ => Kind::Float,
        };
        (enabled, kind)
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: see `ffi`. As torch.autocast's `__exit__`: the cast-weight cache is cleared
        // when the outermost scope ends, then the previous state is restored.
        unsafe {
            if ffi::decrement_nesting() == 0 {
                ffi::clear_cache();
            }
            ffi::set_autocast_enabled(self.device_type, self.was_enabled);
            ffi::set_autocast_dtype(self.device_type, self.previous_dtype);
        }
    }
}

pub use crate::device::Precision;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::Tensor;

    /// The CPU, and the GPU too where there is one.
    fn devices() -> Vec<Device> {
        let mut devices = vec![Device::Cpu];
        if let Ok(selected) = crate::device::select(crate::device::DevicePreference::Auto) {
            if selected.device().is_cuda() {
                devices.push(selected.device());
            }
        }
        devices
    }

    #[test]
    fn matrix_products_run_in_bf16_inside_the_scope_and_in_f32_after_it() {
        for device in devices() {
            let a = Tensor::randn([4, 8], (Kind::Float, device));
            let b = Tensor::randn([8, 3], (Kind::Float, device));
            assert_eq!(a.matmul(&b).kind(), Kind::Float);
            {
                let _outer = Autocast::bf16(device);
                assert_eq!(Autocast::state(device), (true, Kind::BFloat16), "{device:?}");
                assert_eq!(a.matmul(&b).kind(), Kind::BFloat16, "{device:?}");
                {
                    let _inner = Autocast::bf16(device);
                    assert_eq!(a.matmul(&b).kind(), Kind::BFloat16);
                }
                // The inner scope restored the outer one's state, not "off".
                assert_eq!(a.matmul(&b).kind(), Kind::BFloat16, "{device:?}");
                // Softmax stays f32 on autocast's list of precision-sensitive operators.
                assert_eq!(a.matmul(&b).softmax(-1, Kind::Float).kind(), Kind::Float);
            }
            assert!(!Autocast::state(device).0, "{device:?}");
            assert_eq!(a.matmul(&b).kind(), Kind::Float, "{device:?}");
        }
    }

    #[test]
    fn gradients_of_f32_weights_stay_f32_under_autocast() {
        let w = Tensor::randn([8, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let loss = {
            let _scope = Autocast::bf16(Device::Cpu);
            x.matmul(&w).to_kind(Kind::Float).pow_tensor_scalar(2).mean(Kind::Float)
        };
        loss.backward();
        assert_eq!(w.grad().kind(), Kind::Float);
        let exact = 2.0 * x.matmul(&w).detach();
        let expected = x.tr().matmul(&exact) / 12.0;
        assert!((w.grad() - expected).abs().max().double_value(&[]) < 0.05, "bf16 gradients are close to f32 ones");
    }
}
