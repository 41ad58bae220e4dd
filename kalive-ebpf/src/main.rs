//! kalive's BPF programs. One module per kernel hook family under `probes/`; the
//! records they emit are defined in `kalive-common`.
#![no_std]
#![no_main]

mod kernel;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier proves there are no reachable panics; this is never called.
    loop {}
}
