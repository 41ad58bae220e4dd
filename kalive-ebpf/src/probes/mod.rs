//! One module per family of kernel hooks. Each hook body is written once and
//! instantiated for tp_btf (BTF-typed arguments) and raw_tp (bare numbers); the
//! loader uses tp_btf where it loads and falls back to raw_tp per hook.

mod functions;
pub(crate) mod iter;
mod owner;
mod setsockopt;
mod state;
mod tcp;
pub(crate) mod timer;

/// Arguments of a tp_btf or raw_tp program: an array of u64 in both cases.
#[derive(Clone, Copy)]
pub(crate) struct Args(*const u64);

impl Args {
    #[inline(always)]
    pub(crate) fn get(self, n: usize) -> u64 {
        // SAFETY: the context of tp_btf and raw_tp programs is the array of the
        // tracepoint's arguments; callers only read arguments the tracepoint has.
        unsafe { *self.0.add(n) }
    }
}

/// `hook!("name", btf_program, raw_program, body)` defines the tp_btf
/// program `btf_program` and the raw_tp program `raw_program` on tracepoint
/// `name`, both calling `body::<BTF>(args)`. `BTF` tells whether the arguments
/// are BTF-typed, so that the body may pass them to helpers that need that.
macro_rules! hook {
    ($tp:literal, $btf:ident, $raw:ident, $body:ident) => {
        #[aya_ebpf::macros::btf_tracepoint(function = $tp)]
        pub fn $btf(ctx: aya_ebpf::programs::BtfTracePointContext) -> i32 {
            use aya_ebpf::EbpfContext as _;
            $body::<true>($crate::probes::Args::new(ctx.as_ptr()));
            0
        }

        #[aya_ebpf::macros::raw_tracepoint(tracepoint = $tp)]
        pub fn $raw(ctx: aya_ebpf::programs::RawTracePointContext) -> i32 {
            use aya_ebpf::EbpfContext as _;
            $body::<false>($crate::probes::Args::new(ctx.as_ptr()));
            0
        }
    };
}
pub(crate) use hook;

impl Args {
    pub(crate) const fn new(ctx: *mut core::ffi::c_void) -> Self {
        Self(ctx.cast_const().cast())
    }
}
