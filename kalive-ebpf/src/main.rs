//! kalive's BPF programs. Hooks live under `probes/`, one module per family; the
//! records they emit are defined in `kalive-common` and built in `emit`.
#![no_std]
#![no_main]

mod emit;
mod kernel;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier proves there are no reachable panics; this is never called.
    loop {}
}
