//! What this CPU offers the fast path: its name, the instruction-set features the kernels use,
//! and its cache sizes, detected once (CPUID on x86-64: leaf 4 on Intel, 0x8000001D on AMD).
//! The direct convolution sizes its blocks of input rows and weights from the L2 size.

use std::sync::OnceLock;

/// Cache sizes assumed when CPUID does not report them (or off x86-64): a common L1 data
/// cache and L2 per core, and a small shared L3.
const ASSUMED: (usize, usize, usize) = (32 << 10, 1 << 20, 8 << 20);

/// The CPU as the fast path sees it ([`CpuInfo::get`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    /// The processor's brand string (empty where CPUID has none).
    pub brand: String,
    /// AVX-512F: the direct and Winograd convolutions.
    pub avx512f: bool,
    /// AVX-512 BF16 (`vdpbf16ps`): the bf16 direct convolution.
    pub avx512_bf16: bool,
    /// AMX with bf16 tiles (reported only: no kernel here uses AMX).
    pub amx_bf16: bool,
    /// L1 data cache per core, bytes.
    pub l1d_bytes: usize,
    /// L2 cache per core, bytes.
    pub l2_bytes: usize,
    /// Last-level (L3) cache, bytes, shared by the cores that share it.
    pub l3_bytes: usize,
    /// Whether the cache sizes were read from the CPU (else they are assumed values).
    pub caches_detected: bool,
}

impl CpuInfo {
    /// This CPU, detected on first use.
    pub fn get() -> &'static CpuInfo {
        static INFO: OnceLock<CpuInfo> = OnceLock::new();
        INFO.get_or_init(Self::detect)
    }

    #[cfg(target_arch = "x86_64")]
    fn detect() -> Self {
        use raw_cpuid::{CacheType, CpuId};
        let id = CpuId::new();
        let (mut l1d, mut l2, mut l3) = (None, None, None);
        for c in id.get_cache_parameters().into_iter().flatten() {
            let bytes = c.associativity()
                * c.physical_line_partitions()
                * c.coherency_line_size()
                * c.sets();
            let slot = match (c.level(), c.cache_type()) {
                (1, CacheType::Data) => &mut l1d,
                (2, CacheType::Unified | CacheType::Data) => &mut l2,
                (3, CacheType::Unified) => &mut l3,
                _ => continue,
            };
            if bytes > 0 {
                *slot = Some(bytes);
            }
        }
        let ext = id.get_extended_feature_info();
        Self {
            brand: id
                .get_processor_brand_string()
                .map(|b| b.as_str().trim().to_string())
                .unwrap_or_default(),
            avx512f: std::is_x86_feature_detected!("avx512f"),
            avx512_bf16: std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bf16"),
            amx_bf16: ext.is_some_and(|e| e.has_amx_bf16() && e.has_amx_tile()),
            caches_detected: l1d.is_some() && l2.is_some(),
            l1d_bytes: l1d.unwrap_or(ASSUMED.0),
            l2_bytes: l2.unwrap_or(ASSUMED.1),
            l3_bytes: l3.unwrap_or(ASSUMED.2),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> Self {
        Self {
            brand: String::new(),
            avx512f: false,
            avx512_bf16: false,
            amx_bf16: false,
            l1d_bytes: ASSUMED.0,
            l2_bytes: ASSUMED.1,
            l3_bytes: ASSUMED.2,
            caches_detected: false,
        }
    }

    // The direct convolution (x86-64 only) is the one user of the blocking sizes.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    /// Bytes of padded input rows one task of the direct convolution works on: 3/8 of the L2,
    /// within 128 KiB and 1.5 MiB (384 KiB on a 1 MiB L2, the size measured best there).
    pub(crate) fn direct_input_bytes(&self) -> usize {
        (self.l2_bytes / 8 * 3).clamp(128 << 10, 3 << 19)
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    /// Bytes of one block's packed weights per chunk of input channels in the direct
    /// convolution: 5/32 of the L2, within 64 KiB and 640 KiB (160 KiB on a 1 MiB L2).
    pub(crate) fn direct_weight_bytes(&self) -> usize {
        (self.l2_bytes / 32 * 5).clamp(64 << 10, 640 << 10)
    }
}

impl std::fmt::Display for CpuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kib = |b: usize| b >> 10;
        let yes = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "{}: AVX-512F {}, AVX-512 BF16 {}, AMX-BF16 {}; L1d {} KiB, L2 {} KiB per core, L3 {} \
             KiB{}",
            if self.brand.is_empty() {
                "CPU"
            } else {
                &self.brand
            },
            yes(self.avx512f),
            yes(self.avx512_bf16),
            yes(self.amx_bf16),
            kib(self.l1d_bytes),
            kib(self.l2_bytes),
            kib(self.l3_bytes),
            if self.caches_detected {
                ""
            } else {
                " (assumed: not reported)"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_on_a_1_mib_l2_is_the_measured_one() {
        let mut info = CpuInfo::get().clone();
        info.l2_bytes = 1 << 20;
        assert_eq!(info.direct_input_bytes(), 384 << 10);
        assert_eq!(info.direct_weight_bytes(), 160 << 10);
        info.l2_bytes = 2 << 20;
        assert_eq!(info.direct_input_bytes(), 768 << 10);
        info.l2_bytes = 256 << 10;
        assert_eq!(info.direct_input_bytes(), 128 << 10);
    }

    #[test]
    fn detected_caches_are_plausible() {
        let info = CpuInfo::get();
        assert!((4 << 10..=1 << 20).contains(&info.l1d_bytes), "{info}");
        assert!((64 << 10..=64 << 20).contains(&info.l2_bytes), "{info}");
        assert!(info.l3_bytes >= 1 << 20, "{info}");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(info.avx512f, std::is_x86_feature_detected!("avx512f"));
    }
}
