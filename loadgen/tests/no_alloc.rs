//! Nothing is allocated per message (STYLE.md, the hot path): two runs that differ only in the
//! number of messages (10x) must allocate about the same. A counting global allocator counts
//! every allocation in this test process, so the "broker" here is a relay that allocates nothing
//! per message either: it frames packets with `ringmq::protocol::frame_len` and forwards
//! PUBLISH bytes unchanged to the subscriber.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ringmq::protocol::frame_len;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

type Subscriber = Arc<Mutex<Option<TcpStream>>>;

fn relay(mut stream: TcpStream, subscriber: Subscriber) {
    let _ = stream.set_nodelay(true);
    let mut pending: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut at = 0;
        while let Ok(Some(len)) = frame_len(&pending[at..], 1 << 20) {
            let frame = &pending[at..at + len];
            match frame[0] >> 4 {
                1 => {
                    let _ = stream.write_all(&[0x20, 2, 0, 0]);
                }
                8 => {
                    // Remaining length < 128 here: the packet id follows a 2-byte header.
                    let _ = stream.write_all(&[0x90, 3, frame[2], frame[3], 0]);
                    *subscriber.lock().unwrap() = Some(stream.try_clone().unwrap());
                }
                3 => {
                    if let Some(s) = subscriber.lock().unwrap().as_mut() {
                        let _ = s.write_all(frame);
                    }
                }
                12 => {
                    let _ = stream.write_all(&[0xd0, 0]);
                }
                14 => return,
                _ => {}
            }
            at += len;
        }
        pending.drain(..at);
    }
}

fn run(port: &str, rate: &str) -> (u64, u64) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let report = common::loadgen(&[
        "pairs",
        "-n",
        "1",
        "--rate",
        rate,
        "--port",
        port,
        "--warmup",
        "0",
        "--duration",
        "0.3",
        "--drain",
        "1",
        "-q",
    ]);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let s = &report.summary;
    assert_eq!(s.received, s.sent, "{:?}", s.errors);
    assert_eq!(s.lost, 0);
    (s.sent, allocations)
}

#[test]
fn allocations_do_not_grow_with_messages() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            // A fresh subscriber slot per connection pair is not needed: the relay keeps the
            // latest subscriber, and each run subscribes before it publishes.
            let subscriber = Arc::clone(&SUBSCRIBER);
            std::thread::spawn(move || relay(stream, subscriber));
        }
    });
    run(&port, "1000"); // warm lazily initialised statics
    let (few, few_allocations) = run(&port, "2000");
    let (many, many_allocations) = run(&port, "20000");
    assert_eq!((few, many), (600, 6000));
    let extra = many_allocations.saturating_sub(few_allocations);
    eprintln!("{few} messages: {few_allocations} allocations; {many}: {many_allocations}");
    assert!(
        extra * 50 < many - few,
        "{extra} more allocations for {} more messages ({few_allocations} vs {many_allocations})",
        many - few
    );
}

static SUBSCRIBER: std::sync::LazyLock<Subscriber> = std::sync::LazyLock::new(Subscriber::default);
