//! Keeping rapd's resident set to what it is using now.
//!
//! Two kinds of memory outlive the moment that needed them. Heap freed after a burst
//! stays with the allocator until [`trim_heap`] gives it back. And code and read-only
//! data touched once — the FIPS module's self-tests at start, configuration and schema
//! work, OpenSSL's start-up — stay mapped in rapd's page tables although the steady state
//! never runs them again: at rapd's size they are most of its resident set (libcrypto,
//! the FIPS module and rapd's own text are ~10 MiB of pages touched at start).
//! [`release_file_pages`] gives those pages back. On every read-only file mapping it sets
//! `MADV_RANDOM`, so that what rapd runs later faults back in page by page instead of
//! with the kernel's read-around of 32 pages per fault, and `MADV_PAGEOUT`, which
//! reclaims the pages only rapd maps (its own text above all). The kernel leaves pages
//! alone that other processes map too (libc, libcrypto and the FIPS module are shared
//! with sshd, rsyslog and the pages), so each read-only mapping that holds no private
//! copy-on-write page (`Anonymous: 0 kB` in `/proc/self/smaps`: text and read-only data,
//! never a RELRO segment that the loader wrote) is then dropped from rapd's page tables
//! with `MADV_DONTNEED`. Its pages stay in the page cache for the
//! other processes, and whatever rapd runs later faults back in from there unchanged.
//! Writable mappings and mappings with private pages are never dropped, so no data can be
//! lost. This relies on rapd never unloading a shared object (OpenSSL keeps its providers
//! loaded for the life of the process; rapd calls no `dlclose`), so a mapping seen in
//! smaps is still the same mapping when it is advised.
//!
//! [`relax`] trims the heap on every call and releases the file pages at most once per the
//! period its caller gives. The uplink calls it when it goes idle (pages at most every
//! 60 s) and after each delivered batch of a drain (pages at most every 250 ms): the kernel
//! maps code back in 64 KiB at a time (fault-around), so without it a long drain ends with
//! most of rapd's text resident although one batch runs a fraction of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Gives heap memory freed after a burst back to the system.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Gives rapd's read-only file-backed pages back (see the module documentation);
/// returns how many mappings were dropped from rapd's page tables. Harmless on kernels
/// that do not know `MADV_PAGEOUT` (before Linux 5.4): that advice is then refused.
pub fn release_file_pages() -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut dropped = 0;
    for m in read_only_file_mappings(&smaps) {
        let (start, len) = (m.start as *mut libc::c_void, m.end - m.start);
        // SAFETY: the range is a whole mapping of this process that is not writable;
        // MADV_RANDOM only turns off read-around, and MADV_PAGEOUT only reclaims pages,
        // which fault back in unchanged when used.
        unsafe {
            libc::madvise(start, len, libc::MADV_RANDOM);
            libc::madvise(start, len, libc::MADV_PAGEOUT);
        }
        if m.private_pages {
            continue;
        }
        // SAFETY: a read-only, private file mapping without a single copy-on-write page:
        // every page dropped here reads back from the file exactly as it was.
        if unsafe { libc::madvise(start, len, libc::MADV_DONTNEED) } == 0 {
            dropped += 1;
        }
    }
    dropped
}

static LAST_RELAX_MS: AtomicU64 = AtomicU64::new(0);

/// Called by threads that have just become idle or finished a unit of work: trims the
/// heap, and at most once per `every` (whichever thread calls) releases the read-only
/// file-backed pages.
pub fn relax(every: Duration) {
    trim_heap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let last = LAST_RELAX_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= every.as_millis() as u64
        && LAST_RELAX_MS.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        release_file_pages();
    }
}

/// A read-only file-backed mapping of this process.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    /// Holds private (copy-on-write or anonymous) pages: `Anonymous` is not 0, or the
    /// smaps text did not say.
    private_pages: bool,
}

/// Every mapping in a `/proc/<pid>/smaps` text that is backed by a file (inode ≠ 0) and
/// not writable.
fn read_only_file_mappings(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    // Whether the mapping being read is one of ours, i.e. its fields are to be read.
    let mut current = false;
    for line in smaps.lines() {
        if let Some(value) = line.strip_prefix("Anonymous:") {
            if current {
                if let Some(m) = out.last_mut() {
                    m.private_pages = value.trim() != "0 kB";
                }
            }
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(_off), Some(_dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else { continue };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        // A mapping's header line; field lines ("Rss:   12 kB") never parse as a range.
        let has_path = f.next().is_some_and(|p| p.starts_with('/'));
        current = b > a && perms.len() == 4 && !perms.contains('w') && inode != "0" && has_path;
        if current {
            out.push(Mapping { start: a, end: b, private_pages: true });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_file_mappings_are_chosen() {
        let smaps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fd:00 1234 /usr/bin/rapd
Rss:                 400 kB
Anonymous:             0 kB
55d0c0100000-55d0c0500000 r-xp 00100000 fd:00 1234 /usr/bin/rapd
Rss:                1200 kB
Anonymous:             0 kB
55d0c0500000-55d0c0540000 r--p 00500000 fd:00 1234 /usr/bin/rapd
Anonymous:           256 kB
55d0c0540000-55d0c0600000 rw-p 00540000 fd:00 1234 /usr/bin/rapd
Anonymous:            12 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
Anonymous:           900 kB
7f0000000000-7f0000010000 rw-s 00000000 fd:00 99 /data/rapd/queue.db-shm
Anonymous:             0 kB
7f0000020000-7f0000030000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
7f0000040000-7f0000050000 r-xp 00000000 fd:00 77 /usr/lib/x86_64-linux-gnu/libc.so.6
garbage line
";
        let m = |start, end, private_pages| Mapping { start, end, private_pages };
        assert_eq!(
            read_only_file_mappings(smaps),
            vec![
                m(0x55d0c0000000, 0x55d0c0100000, false),
                m(0x55d0c0100000, 0x55d0c0500000, false),
                // The loader's RELRO segment: copy-on-write pages, never dropped.
                m(0x55d0c0500000, 0x55d0c0540000, true),
                // No Anonymous line: not known to be free of private pages.
                m(0x7f0000040000, 0x7f0000050000, true),
            ]
        );
    }

    #[test]
    fn releasing_pages_leaves_the_process_working() {
        // Our own test binary: everything advised must still run and read correctly.
        // Pointers in a static live in the RELRO segment, which the loader relocated:
        // dropping it would turn them into zeroes.
        static NAMES: [&str; 3] = ["status", "alarm", "qc"];
        let table: Vec<u64> = (0..1000).map(|i| i * i).collect();
        assert!(release_file_pages() > 0);
        assert_eq!(table.iter().sum::<u64>(), 332_833_500);
        assert_eq!(std::hint::black_box(&NAMES).concat(), "statusalarmqc");
        assert_eq!(format!("{:?}", Duration::from_millis(1500)), "1.5s");
    }
}
