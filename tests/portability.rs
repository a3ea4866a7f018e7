//! Every shader translates with naga to SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12).
//! Only the register-blocked convolution and weight gradient use subgroup operations (optional
//! paths chosen by feature detection); they need MSL 2.1 and HLSL shader model 6.0. The
//! cooperative-matrix convolutions (chosen by feature detection too) need MSL 2.3 and have no
//! HLSL: wgpu offers cooperative matrices on Vulkan and Metal only.

use dilated::gpu::Kernel;

fn module(kernel: Kernel) -> (naga::Module, naga::valid::ModuleInfo) {
    let source = kernel.source();
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("{}: {}", kernel.name(), e.emit_to_string(&source)));
    // Only the register-blocked kernels use subgroup operations; the cooperative-matrix ones
    // also f16 and cooperative matrices.
    let capabilities = if kernel.coop_size().is_some() {
        naga::valid::Capabilities::SUBGROUP
            | naga::valid::Capabilities::SHADER_FLOAT16
            | naga::valid::Capabilities::COOPERATIVE_MATRIX
    } else if matches!(
        kernel,
        Kernel::ConvBlocked
            | Kernel::ConvBlocked64
            | Kernel::ConvBlockedPacked
            | Kernel::ConvGradWeightBlocked
    ) {
        naga::valid::Capabilities::SUBGROUP
    } else {
        naga::valid::Capabilities::empty()
    };
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", kernel.name(), e.emit_to_string(&source)));
    (module, info)
}

#[test]
fn shaders_translate_to_spirv() {
    for kernel in Kernel::ALL {
        let (module, info) = module(kernel);
        let words =
            naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
                .unwrap_or_else(|e| panic!("{}: SPIR-V: {e}", kernel.name()));
        assert!(
            words.len() > 10 && words[0] == 0x0723_0203,
            "{}: no SPIR-V header",
            kernel.name()
        );
    }
}

#[test]
fn shaders_translate_to_msl() {
    for kernel in Kernel::ALL {
        let (module, info) = module(kernel);
        let pipeline = naga::back::msl::PipelineOptions::default();
        let (source, _) = naga::back::msl::write_string(
            &module,
            &info,
            &naga::back::msl::Options {
                // Cooperative matrices (simdgroup matrices) need MSL 2.3.
                lang_version: if kernel.coop_size().is_some() {
                    (2, 3)
                } else {
                    (2, 1)
                },
                ..Default::default()
            },
            &pipeline,
        )
        .unwrap_or_else(|e| panic!("{}: MSL: {e}", kernel.name()));
        assert!(
            source.contains("kernel void"),
            "{}: no compute entry point in MSL",
            kernel.name()
        );
    }
}

/// The cooperative-matrix kernels excepted: wgpu offers cooperative matrices on Vulkan and
/// Metal only, and naga writes none in HLSL.
#[test]
fn shaders_translate_to_hlsl() {
    for kernel in Kernel::ALL.into_iter().filter(|k| k.coop_size().is_none()) {
        let (module, info) = module(kernel);
        let mut out = String::new();
        let options = naga::back::hlsl::Options {
            shader_model: naga::back::hlsl::ShaderModel::V6_0,
            ..Default::default()
        };
        let pipeline = naga::back::hlsl::PipelineOptions::default();
        let mut writer = naga::back::hlsl::Writer::new(&mut out, &options, &pipeline);
        writer
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{}: HLSL: {e}", kernel.name()));
        assert!(
            out.contains("[numthreads("),
            "{}: no compute entry point in HLSL",
            kernel.name()
        );
    }
}
