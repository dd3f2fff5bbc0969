//! Keeping rapd's resident set to what it is using now.
//!
//! Two kinds of memory outlive the moment that needed them. Heap freed after a burst
//! stays with the allocator until [`trim_heap`] gives it back. And code and read-only
//! data touched once — the FIPS module's self-tests at start, configuration and schema
//! work, OpenSSL's start-up — stay mapped in rapd's page tables although the steady state
//! never runs them again: at rapd's size they are most of its resident set (libcrypto,
//! the FIPS module and rapd's own text are ~10 MiB of pages touched at start).
//! [`release_file_pages`] asks the kernel to reclaim the read-only file-backed pages
//! (`MADV_PAGEOUT`); pages other processes map too (libc) are left alone by the kernel,
//! and whatever rapd runs later faults back in from the page cache or the root file
//! system. Writable mappings are never touched, so no data can be lost or written back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Gives heap memory freed after a burst back to the system.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Asks the kernel to reclaim rapd's read-only file-backed pages (see the module
/// documentation); returns how many mappings were advised. Harmless if the kernel does
/// not know `MADV_PAGEOUT` (before Linux 5.4): the advice is then refused and ignored.
pub fn release_file_pages() -> usize {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let mut advised = 0;
    for (start, end) in read_only_file_mappings(&maps) {
        // SAFETY: the range is a whole mapping of this process that is not writable;
        // MADV_PAGEOUT only reclaims pages, which fault back in unchanged when used.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
        if rc == 0 {
            advised += 1;
        }
    }
    advised
}

static LAST_RELAX_S: AtomicU64 = AtomicU64::new(0);

/// Called by threads that have just become idle: trims the heap, and at most once per
/// `every` releases the read-only file-backed pages.
pub fn relax(every: Duration) {
    trim_heap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let last = LAST_RELAX_S.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= every.as_secs()
        && LAST_RELAX_S.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        release_file_pages();
    }
}

/// `(start, end)` of every mapping in a `/proc/<pid>/maps` text that is backed by a file
/// (inode ≠ 0) and not writable.
fn read_only_file_mappings(maps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(_off), Some(_dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if perms.contains('w') || inode == "0" {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else { continue };
        if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
            if b > a {
                out.push((a, b));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_file_mappings_are_chosen() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fd:00 1234 /usr/bin/rapd
55d0c0100000-55d0c0500000 r-xp 00100000 fd:00 1234 /usr/bin/rapd
55d0c0500000-55d0c0600000 rw-p 00500000 fd:00 1234 /usr/bin/rapd
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000010000 rw-s 00000000 fd:00 99 /data/rapd/queue.db-shm
7f0000020000-7f0000030000 r-xp 00000000 00:00 0 [vdso]
garbage line
";
        assert_eq!(
            read_only_file_mappings(maps),
            vec![(0x55d0c0000000, 0x55d0c0100000), (0x55d0c0100000, 0x55d0c0500000)]
        );
    }

    #[test]
    fn releasing_pages_leaves_the_process_working() {
        // Our own test binary: everything advised must still run and read correctly.
        let table: Vec<u64> = (0..1000).map(|i| i * i).collect();
        assert!(release_file_pages() > 0);
        assert_eq!(table.iter().sum::<u64>(), 332_833_500);
        assert_eq!(format!("{:?}", Duration::from_millis(1500)), "1.5s");
    }
}
