//! The WGSL kernels: sources with shared constants spliced in, and their pipelines, compiled
//! once per device on first use.

use std::sync::OnceLock;

/// Invocations per workgroup of the one-element-per-invocation kernels.
pub const WG_LINEAR: u32 = 64;
/// Output channels per workgroup tile of the tiled convolution.
pub const TILE_M: u32 = 128;
/// Output pixels per workgroup tile of the tiled convolution.
pub const TILE_N: u32 = 128;
/// Reduction depth staged in workgroup memory per step of the tiled convolution.
pub const TILE_K: u32 = 8;
/// Invocations per workgroup of the tiled convolution (16 x 16, each 8 x 8 outputs).
pub const WG_TILED: u32 = 256;
/// Invocations per workgroup of the register-blocked convolution.
pub const WG_BLOCKED: u32 = 64;
/// Output channels per invocation (and per workgroup) of the register-blocked convolution; a
/// multiple of 8, the subgroup lanes its weights are broadcast from.
pub const BLOCK_C: u32 = 32;
/// Output pixels per invocation of the register-blocked convolution (one `vec4`).
pub const BLOCK_P: u32 = 4;
/// Smallest subgroup size the register-blocked convolution works with.
pub const BLOCKED_MIN_SUBGROUP: u32 = 8;

/// Shared by the one-element-per-invocation kernels: the element index of an invocation in a
/// grid folded over x and y (see `Gpu::grid`), so any element count fits the per-dimension limit.
const LINEAR_INVOCATION: &str =
    "fn linear_invocation(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG_LINEAR + lid;
}
";

/// Shared by the convolution kernels and the split-reduction pass (whose uniforms name `flags`
/// and `bias_base` alike, and which bind `bias` and `output`): the end of every output
/// element, the flags applied in order.
const CONV_FINISH: &str =
    "// Output element `o` of channel `co` from its sum: flags 4 accumulate into the existing
// output, 1 add the bias, 2 ReLU.
fn finish(sum: f32, o: u32, co: u32) -> f32 {
    var v = sum;
    if ((p.flags & 4u) != 0u) {
        v += output[o];
    }
    if ((p.flags & 1u) != 0u) {
        v += bias[p.bias_base + co];
    }
    if ((p.flags & 2u) != 0u) {
        v = select(v, 0.0, v < 0.0);
    }
    return v;
}
";

/// One compute kernel of this crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Direct convolution, one output per invocation.
    ConvDirect,
    /// Tiled implicit-GEMM convolution, any geometry.
    ConvTiled,
    /// Tiled matrix product for 1x1 convolutions.
    ConvPointwise,
    /// Register-blocked convolution without workgroup memory.
    ConvBlocked,
    /// Second pass of a tiled convolution whose reduction was split: adds the partial sums,
    /// then bias and ReLU.
    ConvSplitReduce,
    /// ReLU on its own.
    Relu,
    /// Max pooling.
    MaxPool,
    /// Softmax over channels.
    Softmax,
    /// Argmax over channels into a label map.
    Argmax,
    /// Bilinear zoom by an integer factor.
    Zoom,
    /// Per-channel transposed convolution (in-network upsampling).
    Deconv,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 11] = [
        Kernel::ConvDirect,
        Kernel::ConvTiled,
        Kernel::ConvPointwise,
        Kernel::ConvBlocked,
        Kernel::ConvSplitReduce,
        Kernel::Relu,
        Kernel::MaxPool,
        Kernel::Softmax,
        Kernel::Argmax,
        Kernel::Zoom,
        Kernel::Deconv,
    ];

    /// The kernel's name (its shader file and pipeline label).
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::ConvDirect => "conv2d_direct",
            Kernel::ConvTiled => "conv2d_tiled",
            Kernel::ConvPointwise => "conv2d_tiled_pointwise",
            Kernel::ConvBlocked => "conv2d_blocked",
            Kernel::ConvSplitReduce => "conv2d_split_reduce",
            Kernel::Relu => "relu",
            Kernel::MaxPool => "max_pool",
            Kernel::Softmax => "softmax",
            Kernel::Argmax => "argmax",
            Kernel::Zoom => "zoom",
            Kernel::Deconv => "deconv",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Kernel::ConvDirect => include_str!("../../shaders/conv2d_direct.wgsl"),
            Kernel::ConvTiled | Kernel::ConvPointwise => {
                include_str!("../../shaders/conv2d_tiled.wgsl")
            }
            Kernel::ConvBlocked => include_str!("../../shaders/conv2d_blocked.wgsl"),
            Kernel::ConvSplitReduce => include_str!("../../shaders/conv2d_split_reduce.wgsl"),
            Kernel::Relu => include_str!("../../shaders/relu.wgsl"),
            Kernel::MaxPool => include_str!("../../shaders/max_pool.wgsl"),
            Kernel::Softmax => include_str!("../../shaders/softmax.wgsl"),
            Kernel::Argmax => include_str!("../../shaders/argmax.wgsl"),
            Kernel::Zoom => include_str!("../../shaders/zoom.wgsl"),
            Kernel::Deconv => include_str!("../../shaders/deconv.wgsl"),
        }
    }

    /// The complete WGSL source: the shader file preceded by the shared constants, with the
    /// `// BLOCK:` template lines of the register-blocked kernel expanded.
    pub fn source(self) -> String {
        let pointwise = self == Kernel::ConvPointwise;
        let mut file = if self == Kernel::ConvBlocked {
            expand_blocks(self.file())
        } else {
            self.file().to_string()
        };
        if matches!(
            self,
            Kernel::ConvDirect | Kernel::ConvTiled | Kernel::ConvPointwise | Kernel::ConvBlocked
        ) {
            // The convolutions share one uniform layout and set of bindings.
            file = format!(
                "{}\n{CONV_FINISH}\n{file}",
                include_str!("../../shaders/conv_interface.wgsl")
            );
        } else if self == Kernel::ConvSplitReduce {
            file = format!("{file}\n{CONV_FINISH}");
        }
        format!(
            "const WG_LINEAR: u32 = {WG_LINEAR}u;\nconst WG_TILED: u32 = {WG_TILED}u;\n\
             const TILE_M: u32 = {TILE_M}u;\nconst TILE_N: u32 = {TILE_N}u;\n\
             const TILE_K: u32 = {TILE_K}u;\nconst POINTWISE: bool = {pointwise};\n\
             const WG_BLOCKED: u32 = {WG_BLOCKED}u;\nconst BLOCK_C: u32 = {BLOCK_C}u;\n\
             const BLOCK_P: u32 = {BLOCK_P}u;\n\n{LINEAR_INVOCATION}\n{file}"
        )
    }

    /// Number of storage buffers the kernel binds after its uniform (binding 0): read-only
    /// inputs first, the one read-write output last.
    pub const fn storage_bindings(self) -> u32 {
        match self {
            Kernel::ConvDirect
            | Kernel::ConvTiled
            | Kernel::ConvPointwise
            | Kernel::ConvBlocked => 4,
            Kernel::Deconv | Kernel::ConvSplitReduce => 3,
            Kernel::Relu | Kernel::MaxPool | Kernel::Softmax | Kernel::Argmax | Kernel::Zoom => 2,
        }
    }

    /// Position in [`Kernel::ALL`] (declaration order).
    const fn index(self) -> usize {
        self as usize
    }
}

/// Expands each line `// BLOCK: template` into one line per weight row `r` (`{r}`, `{8r}`) or
/// per output channel `i` (`{i}`, `{i/8}`, `{i%8}`) of a BLOCK_C-channel block, after the
/// comment.
fn expand_blocks(file: &str) -> String {
    let mut out = String::with_capacity(file.len() * 4);
    for line in file.lines() {
        out.push_str(line);
        out.push('\n');
        let Some((indent, template)) = line.split_once("// BLOCK: ") else {
            continue;
        };
        if template.contains("{i") {
            for i in 0..BLOCK_C {
                let l = template
                    .replace("{i}", &i.to_string())
                    .replace("{i/8}", &(i / 8).to_string())
                    .replace("{i%8}", &(i % 8).to_string());
                out.push_str(&format!("{indent}{l}\n"));
            }
        } else {
            for r in 0..BLOCK_C / 8 {
                let l = template
                    .replace("{r}", &r.to_string())
                    .replace("{8r}", &(8 * r).to_string());
                out.push_str(&format!("{indent}{l}\n"));
            }
        }
    }
    out
}

/// A kernel's pipeline and the layout of its bind group.
pub(crate) struct Compiled {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Pipelines of one device, each built on first use with an explicit layout.
#[derive(Default)]
pub(crate) struct Kernels {
    compiled: [OnceLock<Compiled>; Kernel::ALL.len()],
}

impl Kernels {
    pub(crate) fn get(&self, device: &wgpu::Device, kernel: Kernel) -> &Compiled {
        self.compiled[kernel.index()].get_or_init(|| {
            let storage = kernel.storage_bindings();
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }];
            for i in 1..=storage {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: i < storage,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(kernel.name()),
                entries: &entries,
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(kernel.name()),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.name()),
                source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.name()),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
            Compiled { pipeline, layout }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_kernel_in_declaration_order() {
        for (i, k) in Kernel::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
        }
        assert_eq!(Kernel::Deconv.index() + 1, Kernel::ALL.len());
    }
}
