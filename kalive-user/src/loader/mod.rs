//! Loading the embedded BPF object with the kernel's layout and the user's
//! settings, and attaching a backend's hooks.
//!
//! Backends are interchangeable producers of the same records; they differ in
//! how they see TCP's timers at work:
//! - `fentry`: BPF trampolines on the kernel functions (cheapest);
//! - `kprobe`: kprobes and kretprobes on the same functions, but the timer
//!   callbacks' beginning and end, which must never go unseen, from the timer
//!   tracepoints (see `hooks::PIECES`);
//! - `tracepoint`: the timer tracepoints, which fire for every timer in the
//!   system (works where neither of the others is allowed).
//!
//! All share the TCP, socket, scheduler and syscall tracepoints. A function the
//! compiler inlined cannot be hooked: that part falls back to the timer
//! tracepoints, per hook, not all or nothing.
//!
//! - [`backend`]: which backend runs;
//! - [`hooks`]: the hooks and programs each backend uses;
//! - [`object`]: the embedded object, loaded with the layout and settings;
//! - [`attach`]: loading and attaching one backend's programs;
//! - [`tracer`]: the running programs and their counters;
//! - [`bpf_info`]: what the kernel says about a program that aya does not.

mod attach;
mod backend;
pub mod bpf_info;
mod hooks;
pub(crate) mod object;
mod tracer;

pub use attach::Config;
pub use backend::{Choice, check_release};
pub use hooks::FUNCTIONS;
pub use object::Filters;
pub use tracer::Tracer;
