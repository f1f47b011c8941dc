//! Fault injection for the reliability tests: ways to make wgpu fail on
//! purpose, so the tests can check that each failure comes back as an
//! [`Error`] and that the device keeps working (or, once destroyed, that every
//! call says so). Compiled only with the `testing` feature, which the test
//! suite enables; not part of the supported API.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::kernel::compile_auto;
use crate::ops::elementwise::ELEMENTWISE_FILL;

fn ctx<'a>(device: &'a Device, op: &'static str) -> Result<&'a GpuContext> {
    device.gpu_context().map(|c| &**c).ok_or(Error::InvalidArgument { op, msg: "needs a GPU device".into() })
}

/// Compiles `source` (entry point `main`) as a compute pipeline.
pub fn compile_wgsl(device: &Device, source: &str) -> Result<()> {
    let ctx = ctx(device, "fault::compile_wgsl")?;
    ctx.alive()?;
    compile_auto(&ctx.device, "fault::compile_wgsl", source, "main").map(|_| ())
}

/// Records a dispatch of `elementwise_fill` whose params uniform is bound to
/// a buffer smaller than the shader's params struct: wgpu rejects the pass
/// when the commands are submitted (the next flush).
pub fn record_undersized_uniform(device: &Device) -> Result<()> {
    let ctx = ctx(device, "fault::record_undersized_uniform")?;
    let kernel = ctx.compiled(&ELEMENTWISE_FILL.def)?;
    let small = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("fault: undersized params"),
        size: 4,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    // elementwise_fill binds its output (2) and params (4); the rest are Unused.
    let entries = [
        wgpu::BindGroupEntry { binding: 2, resource: ctx.scratch(1).buffer.as_entire_binding() },
        wgpu::BindGroupEntry { binding: 4, resource: small.as_entire_binding() },
    ];
    let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("fault"), layout: &kernel.layout, entries: &entries });
    ctx.note_kernel("elementwise_fill");
    ctx.record(|enc| {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("elementwise_fill"), timestamp_writes: None });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind_group, &[0]);
        pass.dispatch_workgroups(1, 1, 1);
    });
    Ok(())
}

/// Destroys the device, as a driver reset would lose it.
pub fn destroy(device: &Device) -> Result<()> {
    ctx(device, "fault::destroy")?.device.destroy();
    Ok(())
}
