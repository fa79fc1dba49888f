//! A plain WASI command (`wasi:cli/run`): valid component, wrong world.

fn main() {
    println!("I am a command, not a capsule");
}
