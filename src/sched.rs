//! The shard threads' scheduling (`Config::sched_slice_us`).

use std::io;

/// Asks for a scheduler time slice of `micros` for the calling thread (`Config::sched_slice_us`),
/// keeping its nice value; 0 leaves the kernel's. A thread under another policy than the
/// normal one (e.g. started with `chrt`) is left as it is. Kernels before 6.12 accept the call
/// and ignore the slice.
pub fn set_slice(micros: u32) -> io::Result<()> {
    // SAFETY: plain syscalls on the calling thread (tid 0), with a valid `sched_attr`.
    unsafe {
        if micros == 0 || libc::sched_getscheduler(0) != libc::SCHED_OTHER {
            return Ok(());
        }
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        if nice == -1 && *libc::__errno_location() != 0 {
            return Err(io::Error::last_os_error());
        }
        let attr = libc::sched_attr {
            size: std::mem::size_of::<libc::sched_attr>() as u32,
            sched_policy: libc::SCHED_OTHER as u32,
            sched_flags: 0,
            sched_nice: nice,
            sched_priority: 0,
            sched_runtime: u64::from(micros) * 1000,
            sched_deadline: 0,
            sched_period: 0,
        };
        if libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
