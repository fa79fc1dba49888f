//! Prints `name path` for every built capsule, one per line (used by
//! `cargo xtask demo` to find the components without hand-typed paths).

macro_rules! print_capsule {
    ($name:ident, $path:expr) => {
        println!("{} {}", stringify!($name).replace('_', "-"), $path);
    };
}

fn main() {
    soma_capsules::foreach_example!(print_capsule);
    soma_capsules::foreach_hostile!(print_capsule);
}
