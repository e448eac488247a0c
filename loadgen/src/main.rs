//! ringmq-loadgen: the client side of ringmq's benchmarks (skeleton; see issue 3).
fn main() {
    println!("ringmq-loadgen: not built yet");
}
