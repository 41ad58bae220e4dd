//! One module per family of kernel hooks.

mod state;
