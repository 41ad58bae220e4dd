//! What the kernel says about a loaded program that aya does not pass on,
//! asked with `bpf(BPF_OBJ_GET_INFO_BY_FD)`.

use std::{
    mem::MaybeUninit,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use anyhow::{Context as _, Result};
use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// `recursion_misses` of the program `fd` (aya does not expose it). 0 on
/// kernels older than 5.12, which do not count them.
pub fn recursion_misses(fd: BorrowedFd<'_>) -> Result<u64> {
    Ok(prog_info(fd)?.recursion_misses)
}

/// What the kernel says about program `fd` (`BPF_OBJ_GET_INFO_BY_FD`); its
/// run time and count are 0 unless `kernel.bpf_stats_enabled` is on.
pub fn prog_info(fd: BorrowedFd<'_>) -> Result<bpf_prog_info> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = MaybeUninit::<bpf_prog_info>::zeroed();
    let mut attr = InfoByFd {
        bpf_fd: u32::try_from(fd.as_raw_fd())?,
        info_len: u32::try_from(size_of::<bpf_prog_info>())?,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` is the command's attribute, `info` the buffer it names,
    // as large as it says; both outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            size_of::<InfoByFd>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_OBJ_GET_INFO_BY_FD");
    }
    // SAFETY: all-zero is a valid `bpf_prog_info` (integers only), and the
    // kernel wrote a valid one over it.
    Ok(unsafe { info.assume_init() })
}
