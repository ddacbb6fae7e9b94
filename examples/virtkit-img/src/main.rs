//! virtkit-img: a qemu-img-like tool for qcow2 and raw disk images.
//!
//! ```text
//! virtkit-img create -f qcow2 -o cluster_size=4096,refcount_bits=1 disk.qcow2 10G
//! virtkit-img info --output=json disk.qcow2
//! virtkit-img check -r leaks disk.qcow2
//! virtkit-img convert -p -c -O qcow2 disk.raw disk.qcow2
//! virtkit-img map --output=json disk.qcow2
//! virtkit-img bench -c 100000 -t none disk.qcow2
//! virtkit-img snapshot -c before-upgrade disk.qcow2
//! ```

mod check;
mod map;
mod snapshot;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use virtkit_block::BlockBackend;
use virtkit_qcow2::{
    convert, create, open_image, BackingMode, Compat, CompressionType, ConvertOptions,
    CreateOptions, ImageFormat, OpenOptions, Qcow2,
};

#[derive(Parser)]
#[command(name = "virtkit-img", version, about = "qcow2 and raw disk image tool")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum RepairArg {
    Leaks,
    All,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum CacheMode {
    /// O_DIRECT.
    None,
    /// Page cache.
    Writeback,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show information about an image.
    Info {
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Image format (default: qcow2 if the file starts with the qcow2 magic, else raw).
        #[arg(short = 'f')]
        format: Option<String>,
        file: PathBuf,
    },
    /// Create an image.
    Create {
        #[arg(short = 'f', default_value = "qcow2")]
        format: String,
        /// Options: cluster_size, refcount_bits, compat (0.10|1.1), lazy_refcounts (on|off),
        /// compression_type (zlib|zstd), backing_file, backing_fmt.
        #[arg(short = 'o')]
        options: Option<String>,
        /// Backing file (stored as given; relative names resolve against the image's folder).
        #[arg(short = 'b')]
        backing: Option<String>,
        /// Backing file format (required with -b: formats are never probed).
        #[arg(short = 'F')]
        backing_format: Option<String>,
        /// Do not open the backing file (the size must then be given).
        #[arg(short = 'u')]
        unsafe_backing: bool,
        file: PathBuf,
        /// Size, with optional suffix k, M, G, T (default: the backing file's size).
        size: Option<String>,
    },
    /// Check an image for corruptions and leaks.
    Check {
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        #[arg(short = 'f', default_value = "qcow2")]
        format: String,
        /// Repair leaks, or everything.
        #[arg(short = 'r', value_enum)]
        repair: Option<RepairArg>,
        file: PathBuf,
    },
    /// Convert between raw and qcow2.
    Convert {
        /// Compress the output clusters.
        #[arg(short = 'c')]
        compress: bool,
        /// Show a progress bar.
        #[arg(short = 'p')]
        progress: bool,
        /// Source format.
        #[arg(short = 'f')]
        src_format: Option<String>,
        /// Output format.
        #[arg(short = 'O', default_value = "raw")]
        out_format: String,
        /// Output options (as for create).
        #[arg(short = 'o')]
        options: Option<String>,
        src: PathBuf,
        dst: PathBuf,
    },
    /// Print the allocation map.
    Map {
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        #[arg(short = 'f')]
        format: Option<String>,
        file: PathBuf,
    },
    /// Simple I/O benchmark (like qemu-img bench).
    Bench {
        /// Number of requests.
        #[arg(short = 'c', default_value_t = 75000)]
        count: u64,
        /// Request size.
        #[arg(short = 's', default_value = "4k")]
        size: String,
        /// Write instead of read.
        #[arg(short = 'w')]
        write: bool,
        /// Cache mode.
        #[arg(short = 't', value_enum, default_value = "writeback")]
        cache: CacheMode,
        /// Parallel requests (threads).
        #[arg(short = 'd', default_value_t = 4)]
        depth: u64,
        /// Offset of the first request.
        #[arg(short = 'o', default_value = "0")]
        offset: String,
        /// Distance between requests (default: the request size).
        #[arg(short = 'S')]
        step: Option<String>,
        /// Random offsets (aligned to the request size) instead of sequential.
        #[arg(long)]
        random: bool,
        /// Flush at the end of a write benchmark.
        #[arg(long)]
        flush: bool,
        #[arg(short = 'f')]
        format: Option<String>,
        file: PathBuf,
    },
    /// List, create, apply or delete internal snapshots (like qemu-img snapshot).
    Snapshot(snapshot::SnapshotArgs),
}

fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_lowercase() {
                'b' => 1,
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => bail!("bad size suffix in {s:?}"),
            };
            (&s[..s.len() - 1], m)
        }
        _ => (s, 1),
    };
    let n: f64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    if n < 0.0 {
        bail!("negative size {s:?}");
    }
    Ok((n * mult as f64) as u64)
}

fn probe_format(path: &Path, given: Option<&str>) -> Result<ImageFormat> {
    if let Some(f) = given {
        return Ok(f.parse()?);
    }
    // The top image's format may be probed (like qemu-img); backing formats
    // never are.
    let mut magic = [0u8; 4];
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    use std::os::unix::fs::FileExt;
    let n = f.read_at(&mut magic, 0)?;
    Ok(if n == 4 && magic == *b"QFI\xfb" {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    })
}

fn inspect_opts() -> OpenOptions {
    OpenOptions {
        read_only: true,
        backing: BackingMode::Ignore,
        repair_dirty: false,
        ..Default::default()
    }
}

fn actual_size(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

fn human_size(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v.fract() == 0.0 {
        format!("{v} {}", units[u])
    } else {
        format!("{v:.3} {}", units[u])
            .trim_end_matches('0')
            .to_string()
    }
}

fn info(file: &Path, format: Option<&str>, output: Output) -> Result<()> {
    let fmt = probe_format(file, format)?;
    let name = file.display().to_string();
    let mut snapshot_list = String::new();
    let mut v = json!({
        "filename": name,
        "format": fmt.name(),
        "actual-size": actual_size(file)?,
        "dirty-flag": false,
    });
    match fmt {
        ImageFormat::Raw => {
            v["virtual-size"] = json!(std::fs::metadata(file)?.len());
        }
        ImageFormat::Qcow2 => {
            let q = Qcow2::open(file, inspect_opts())?;
            let h = q.header();
            v["virtual-size"] = json!(h.size);
            v["cluster-size"] = json!(h.cluster_size());
            v["dirty-flag"] = json!(q.is_dirty());
            let mut data = json!({
                "compat": if h.version == 2 { "0.10" } else { "1.1" },
                "compression-type": h.compression.name(),
                "refcount-bits": h.refcount_bits(),
            });
            if h.version >= 3 {
                data["lazy-refcounts"] = json!(h.lazy_refcounts());
                data["corrupt"] = json!(h.incompatible_features & 2 != 0);
                data["extended-l2"] = json!(h.extended_l2());
            }
            v["format-specific"] = json!({"type": "qcow2", "data": data});
            if let Some(b) = &h.backing_file {
                v["backing-filename"] = json!(b);
                let full = if Path::new(b).is_absolute() {
                    PathBuf::from(b)
                } else {
                    file.parent().unwrap_or(Path::new(".")).join(b)
                };
                v["full-backing-filename"] = json!(full.display().to_string());
                if let Some(f) = &h.backing_format {
                    v["backing-filename-format"] = json!(f);
                }
            }
            snapshot_list = virtkit_qcow2::snapshot::format_list(q.snapshots());
            if !q.snapshots().is_empty() {
                v["snapshots"] = q
                    .snapshots()
                    .iter()
                    .map(|s| {
                        json!({
                            "id": s.id,
                            "name": s.name,
                            "vm-state-size": s.vm_state_size,
                            "date-sec": s.date_sec,
                            "date-nsec": s.date_nsec,
                            "vm-clock-sec": s.vm_clock_nsec / 1_000_000_000,
                            "vm-clock-nsec": s.vm_clock_nsec % 1_000_000_000,
                        })
                    })
                    .collect();
            }
        }
    }
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("image: {name}");
    println!("file format: {}", fmt.name());
    let vs = v["virtual-size"].as_u64().unwrap_or(0);
    println!("virtual size: {} ({vs} bytes)", human_size(vs));
    println!(
        "disk size: {}",
        human_size(v["actual-size"].as_u64().unwrap_or(0))
    );
    if let Some(cs) = v["cluster-size"].as_u64() {
        println!("cluster_size: {cs}");
    }
    if let Some(b) = v["backing-filename"].as_str() {
        println!("backing file: {b}");
        if let Some(f) = v["backing-filename-format"].as_str() {
            println!("backing file format: {f}");
        }
    }
    print!("{snapshot_list}");
    if let Some(d) = v["format-specific"]["data"].as_object() {
        println!("Format specific information:");
        for (k, val) in d {
            let val = match val {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("    {}: {val}", k.replace('-', " "));
        }
    }
    Ok(())
}

fn parse_create_opts(
    o: &mut CreateOptions,
    s: &str,
    backing: &mut (Option<String>, Option<String>),
) -> Result<()> {
    for kv in s.split(',').filter(|x| !x.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "on"));
        match k {
            "cluster_size" => o.cluster_size = parse_size(v)?,
            "refcount_bits" => o.refcount_bits = v.parse().context("refcount_bits")?,
            "compat" => {
                o.compat = match v {
                    "0.10" | "v2" => Compat::V2,
                    "1.1" | "v3" => Compat::V3,
                    _ => bail!("compat must be 0.10 or 1.1"),
                }
            }
            "lazy_refcounts" => o.lazy_refcounts = v == "on" || v == "true",
            "compression_type" => {
                o.compression = match v {
                    "zlib" => CompressionType::Zlib,
                    "zstd" => CompressionType::Zstd,
                    _ => bail!("compression_type must be zlib or zstd"),
                }
            }
            "backing_file" => backing.0 = Some(v.to_string()),
            "backing_fmt" => backing.1 = Some(v.to_string()),
            "size" => o.size = parse_size(v)?,
            other => bail!("unknown option {other:?}"),
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn cmd_create(
    format: &str,
    options: Option<&str>,
    b: Option<String>,
    bf: Option<String>,
    unsafe_backing: bool,
    file: &Path,
    size: Option<&str>,
) -> Result<()> {
    let fmt: ImageFormat = format.parse()?;
    let mut o = CreateOptions::default();
    let mut backing = (b, bf);
    if let Some(s) = options {
        parse_create_opts(&mut o, s, &mut backing)?;
    }
    if let Some(s) = size {
        o.size = parse_size(s)?;
    }
    if fmt == ImageFormat::Raw {
        if backing.0.is_some() {
            bail!("raw images cannot have a backing file");
        }
        let f = std::fs::File::create(file)
            .with_context(|| format!("cannot create {}", file.display()))?;
        f.set_len(o.size)?;
        return Ok(());
    }
    if let Some(name) = backing.0 {
        let Some(bfmt) = backing.1 else {
            bail!("a backing file needs its format (-F raw|qcow2): formats are never probed");
        };
        let bfmt: ImageFormat = bfmt.parse()?;
        if size.is_none() && o.size == 0 {
            if unsafe_backing {
                bail!("-u needs an explicit size");
            }
            let p = if Path::new(&name).is_absolute() {
                PathBuf::from(&name)
            } else {
                file.parent().unwrap_or(Path::new(".")).join(&name)
            };
            let dev = open_image(
                &p,
                bfmt,
                &OpenOptions {
                    read_only: true,
                    backing: BackingMode::Follow,
                    ..Default::default()
                },
            )
            .with_context(|| format!("cannot open backing file {}", p.display()))?;
            o.size = dev.size();
        }
        o.backing = Some((name, bfmt));
    }
    create(file, &o)?;
    Ok(())
}

fn cmd_convert(
    compress: bool,
    progress: bool,
    src_format: Option<&str>,
    out_format: &str,
    options: Option<&str>,
    src: &Path,
    dst: &Path,
) -> Result<()> {
    let mut o = ConvertOptions {
        src_format: probe_format(src, src_format)?,
        dst_format: out_format.parse()?,
        compress,
        ..Default::default()
    };
    if let Some(s) = options {
        let mut b = (None, None);
        parse_create_opts(&mut o.create, s, &mut b)?;
        if b.0.is_some() {
            bail!("convert does not take a backing file");
        }
    }
    let mut last = -1i64;
    convert(src, dst, &o, |done, total| {
        if !progress {
            return;
        }
        let pct = if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        };
        let tenth = (pct * 100.0) as i64;
        if tenth != last {
            last = tenth;
            eprint!("    ({pct:.2}/100%)\r");
            let _ = std::io::stderr().flush();
        }
    })?;
    if progress {
        eprintln!();
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn cmd_bench(
    count: u64,
    size: &str,
    write: bool,
    cache: CacheMode,
    depth: u64,
    offset: &str,
    step: Option<&str>,
    random: bool,
    flush: bool,
    format: Option<&str>,
    file: &Path,
) -> Result<()> {
    let fmt = probe_format(file, format)?;
    let bs = parse_size(size)?;
    let off0 = parse_size(offset)?;
    let step = step.map(parse_size).transpose()?.unwrap_or(bs);
    let dev: Arc<dyn BlockBackend> = open_image(
        file,
        fmt,
        &OpenOptions {
            read_only: !write,
            direct: cache == CacheMode::None,
            backing: BackingMode::Follow,
            ..Default::default()
        },
    )?;
    let disk = dev.size();
    if bs == 0 || bs > disk {
        bail!("bad request size");
    }
    let slots = (disk - off0.min(disk)) / step.max(1);
    if slots == 0 {
        bail!("no room for requests");
    }
    println!(
        "Sending {count} {} requests, {bs} bytes each, {depth} in parallel (starting at offset {off0}, step size {step})",
        if write { "write" } else { "read" }
    );
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut threads = Vec::new();
    for t in 0..depth.max(1) {
        let dev = dev.clone();
        let next = next.clone();
        threads.push(std::thread::spawn(move || -> Result<()> {
            let mut buf = vec![0xa5u8; bs as usize];
            let mut r = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok(());
                }
                let slot = if random {
                    r ^= r << 13;
                    r ^= r >> 7;
                    r ^= r << 17;
                    r % slots
                } else {
                    i % slots
                };
                let off = off0 + slot * step;
                if write {
                    dev.write_at(&buf, off)?;
                } else {
                    dev.read_at(&mut buf, off)?;
                }
            }
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("bench thread panicked"))??;
    }
    if flush && write {
        dev.flush()?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "Run completed in {secs:.3} seconds ({:.0} IOPS).",
        count as f64 / secs
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Info {
            output,
            format,
            file,
        } => info(&file, format.as_deref(), output).map(|_| 0),
        Cmd::Create {
            format,
            options,
            backing,
            backing_format,
            unsafe_backing,
            file,
            size,
        } => cmd_create(
            &format,
            options.as_deref(),
            backing,
            backing_format,
            unsafe_backing,
            &file,
            size.as_deref(),
        )
        .map(|_| 0),
        Cmd::Check {
            output,
            format,
            repair,
            file,
        } => check::cmd_check(&file, &format, repair, output),
        Cmd::Convert {
            compress,
            progress,
            src_format,
            out_format,
            options,
            src,
            dst,
        } => cmd_convert(
            compress,
            progress,
            src_format.as_deref(),
            &out_format,
            options.as_deref(),
            &src,
            &dst,
        )
        .map(|_| 0),
        Cmd::Map {
            output,
            format,
            file,
        } => map::cmd_map(&file, format.as_deref(), output).map(|_| 0),
        Cmd::Bench {
            count,
            size,
            write,
            cache,
            depth,
            offset,
            step,
            random,
            flush,
            format,
            file,
        } => cmd_bench(
            count,
            &size,
            write,
            cache,
            depth,
            &offset,
            step.as_deref(),
            random,
            flush,
            format.as_deref(),
            &file,
        )
        .map(|_| 0),
        Cmd::Snapshot(a) => snapshot::cmd_snapshot(&a),
    };
    match code {
        Ok(0) => Ok(()),
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("virtkit-img: {e:#}");
            std::process::exit(1);
        }
    }
}
