//! The JWT secret and the admin key are wiped before their memory is freed (issue 17 item 5).
//!
//! A global allocator looks at every block as it is freed (or moved by a reallocation) and
//! counts those that still hold a marker. The secrets are built from the marker and dropped:
//! no block may hold it. A plain `String` with the marker, dropped the same way, is found: the
//! detector works. One test function in its own binary, so no other test frees memory meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use switchboard_server::app::Settings;
use switchboard_server::auth::Keys;
use switchboard_server::secret::{AdminKey, JwtSecret};

const MARKER: &[u8] = b"marker:7f0c2a9e51d4b8c3";

static SCANNING: AtomicBool = AtomicBool::new(false);
static FOUND: AtomicUsize = AtomicUsize::new(0);

struct Inspecting;

/// Counts `size` bytes at `ptr` if they hold the marker.
///
/// # Safety
///
/// `ptr` points to `size` initialized or uninitialized bytes the allocator still owns.
unsafe fn inspect(ptr: *mut u8, size: usize) {
    if SCANNING.load(Ordering::Relaxed) && size >= MARKER.len() {
        // SAFETY: the block is live until this function's caller frees or moves it; reading it
        // as bytes is what an allocator may do with its own memory.
        let block = unsafe { std::slice::from_raw_parts(ptr, size) };
        if block.windows(MARKER.len()).any(|w| w == MARKER) {
            FOUND.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// SAFETY: forwards every call to the system allocator; `inspect` only reads a block the caller
// is about to free or move.
unsafe impl GlobalAlloc for Inspecting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe {
            inspect(ptr, layout.size());
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            inspect(ptr, layout.size());
            System.realloc(ptr, layout, new_size)
        }
    }
}

#[global_allocator]
static GLOBAL: Inspecting = Inspecting;

/// How many freed blocks held the marker while `f` ran.
fn blocks_freed_with_marker(f: impl FnOnce()) -> usize {
    FOUND.store(0, Ordering::Relaxed);
    SCANNING.store(true, Ordering::Relaxed);
    f();
    SCANNING.store(false, Ordering::Relaxed);
    FOUND.load(Ordering::Relaxed)
}

/// The marker, padded to a secret long enough for the server, in a fresh `String`.
fn secret_text() -> String {
    let mut s = String::with_capacity(64);
    s.push_str(std::str::from_utf8(MARKER).unwrap());
    s.push_str("-and-enough-bytes-to-pass");
    s
}

#[test]
fn secrets_are_wiped_before_their_memory_is_freed_and_the_detector_sees_what_is_not() {
    // The detector: a plain string keeps its bytes when freed.
    assert_eq!(blocks_freed_with_marker(|| drop(std::hint::black_box(secret_text()))), 1);

    // Built from owned text (moved in, not copied), cloned, printed, dropped.
    let found = blocks_freed_with_marker(|| {
        let secret = JwtSecret::from(secret_text());
        let key = AdminKey::from(secret_text());
        let shared = (secret.clone(), key.clone());
        let shown = format!("{secret:?} {key:?} {shared:?}");
        assert!(!shown.contains("marker"), "{shown}");
        assert!(key.matches(std::str::from_utf8(secret.expose()).unwrap()));
        drop((secret, key, shared));
    });
    assert_eq!(found, 0, "a freed block still held a secret");

    // The server's settings hold them the same way, and print neither.
    let found = blocks_freed_with_marker(|| {
        let settings = Settings::new(secret_text(), secret_text());
        let shown = format!("{settings:?}");
        assert!(!shown.contains("marker") && shown.contains("[redacted]"), "{shown}");
        drop(settings.clone());
        drop(settings);
    });
    assert_eq!(found, 0, "a freed block still held a secret");

    // What the docs say is not covered: jsonwebtoken's own copy in its keys is freed as it is
    // (README "Secrets in memory"). If this fails, it wipes them now: update the docs.
    let secret = JwtSecret::from(secret_text());
    let found = blocks_freed_with_marker(|| drop(Keys::new(secret.expose()).unwrap()));
    assert!(found > 0, "jsonwebtoken now wipes its keys: say so in the docs");
}
