//! Criterion benchmarks for virtkit live in `benches/`.
