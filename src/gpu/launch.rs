//! Kernel launches of the MD step, as programmatic dependent launches where the GPU has them.
//!
//! A programmatic dependent launch (compute capability 9.0 on) lets a kernel's blocks start while
//! the kernel before it on the stream still runs; the kernel itself waits
//! (`wait_for_previous_kernels`, kernels/common.cuh) until its predecessors have finished and
//! their writes are visible. What overlaps is the launch itself and whatever a kernel does before
//! its wait (its filter weights, in the message kernels). Inside a captured graph the stream
//! order becomes programmatic edges. cudarc's launch builder has no launch attributes, so this
//! goes through `cuLaunchKernelEx` itself; the arguments are pushed as cudarc pushes them (a
//! pointer to each value, read by the driver during the call).

use std::ffi::c_void;
use std::marker::PhantomData;

use cudarc::driver::{result::DriverError, sys, CudaFunction, CudaStream, DeviceRepr, LaunchConfig};

/// One kernel launch: the function, its arguments by reference, and how it may overlap.
pub struct Launch<'a> {
    stream: &'a CudaStream,
    function: &'a CudaFunction,
    programmatic: bool,
    args: Vec<*mut c_void>,
    _values: PhantomData<&'a ()>,
}

impl<'a> Launch<'a> {
    /// A launch of `function` on `stream`; `programmatic`: may start before its predecessor ends
    /// (every kernel launched so must call `wait_for_previous_kernels` before it touches the
    /// step's buffers).
    pub fn new(stream: &'a CudaStream, function: &'a CudaFunction, programmatic: bool) -> Self {
        Launch {
            stream,
            function,
            programmatic,
            args: Vec::new(),
            _values: PhantomData,
        }
    }

    /// The next kernel argument: a device pointer (`u64`), a scalar or a `#[repr(C)]` struct.
    pub fn arg<T: DeviceRepr>(mut self, value: &'a T) -> Self {
        self.args.push(value as *const T as *mut c_void);
        self
    }

    /// Enqueues the kernel.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters in number, order and layout, and the
    /// memory they point to must be valid for what the kernel does with it.
    pub unsafe fn launch(mut self, config: LaunchConfig) -> Result<(), DriverError> {
        self.stream.context().bind_to_thread()?;
        let mut attribute = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: std::mem::zeroed(),
        };
        attribute.value.programmaticStreamSerializationAllowed = 1;
        let ex = sys::CUlaunchConfig {
            gridDimX: config.grid_dim.0,
            gridDimY: config.grid_dim.1,
            gridDimZ: config.grid_dim.2,
            blockDimX: config.block_dim.0,
            blockDimY: config.block_dim.1,
            blockDimZ: config.block_dim.2,
            sharedMemBytes: config.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attribute,
            numAttrs: u32::from(self.programmatic),
        };
        sys::cuLaunchKernelEx(
            &ex,
            self.function.cu_function(),
            self.args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()
    }
}
