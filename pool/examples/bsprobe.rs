//! Block-size probe: the same workload on pool volumes of each block size and on a raw file,
//! in one run. `cargo run --release -p pool --example bsprobe [DIR]`.
use pool::{Pool, PoolConfig};
use std::os::unix::fs::FileExt;
use std::time::Instant;

trait Dev: Sync {
    fn w(&self, off: u64, b: &[u8]);
    fn r(&self, off: u64, b: &mut [u8]);
    fn flush(&self);
}
impl Dev for pool::VolumeHandle {
    fn w(&self, off: u64, b: &[u8]) {
        self.write_at(off, b).expect("write")
    }
    fn r(&self, off: u64, b: &mut [u8]) {
        self.read_at(off, b).expect("read")
    }
    fn flush(&self) {
        pool::VolumeHandle::flush(self).expect("flush")
    }
}
impl Dev for std::fs::File {
    fn w(&self, off: u64, b: &[u8]) {
        self.write_all_at(b, off).expect("write")
    }
    fn r(&self, off: u64, b: &mut [u8]) {
        self.read_exact_at(b, off).expect("read")
    }
    fn flush(&self) {
        self.sync_data().expect("sync")
    }
}

const SIZE: u64 = 512 << 20;

fn run(name: &str, v: &dyn Dev) {
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    for i in 0..SIZE >> 20 {
        v.w(i << 20, &buf);
    }
    v.flush();
    let seqw = SIZE as f64 / t.elapsed().as_secs_f64() / 1e6;
    let t = Instant::now();
    let mut rb = vec![0u8; 1 << 20];
    for i in 0..SIZE >> 20 {
        v.r(i << 20, &mut rb);
    }
    let seqr = SIZE as f64 / t.elapsed().as_secs_f64() / 1e6;
    let n = 40000u64;
    let rand = |write: bool| {
        let t = Instant::now();
        std::thread::scope(|s| {
            for th in 0..4u64 {
                s.spawn(move || {
                    let mut x = th * 7919 + 1;
                    let mut b = [7u8; 4096];
                    for _ in 0..n / 4 {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let off = ((x >> 33) % (SIZE / 4096)) * 4096;
                        if write {
                            v.w(off, &b)
                        } else {
                            v.r(off, &mut b)
                        }
                    }
                });
            }
        });
        if write {
            v.flush();
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    let rw = rand(true);
    let rr = rand(false);
    println!("{name:>10}: seq write {seqw:6.0} MB/s  seq read {seqr:6.0} MB/s  rand 4K write {rw:7.0}/s  rand 4K read {rr:8.0}/s");
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or("/var/tmp".into());
    let dir = std::path::Path::new(&dir);
    let raw_path = dir.join("probe-raw.img");
    let _ = std::fs::remove_file(&raw_path);
    let raw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&raw_path)
        .expect("raw");
    raw.set_len(SIZE).expect("size");
    run("raw file", &raw);
    drop(raw);
    let _ = std::fs::remove_file(&raw_path);
    for bs in [4096u32, 8192, 16384, 65536] {
        let path = dir.join(format!("probe-{bs}.tarn"));
        let _ = std::fs::remove_file(&path);
        let pool = Pool::create_file(&path, "p", 2 << 30, PoolConfig::default()).expect("pool");
        pool.create_volume("p/v", SIZE, bs, &Default::default())
            .expect("vol");
        let v = pool.volume("p/v").expect("v");
        run(&format!("bs {bs}"), &v);
        drop(v);
        drop(pool);
        let _ = std::fs::remove_file(&path);
    }
}
