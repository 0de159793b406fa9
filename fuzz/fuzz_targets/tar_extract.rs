//! Release extraction (the updater's upload): any bytes, gzip'd or not,
//! never panic, never write outside the staging directory, never leave a
//! link, a device or a setuid file behind, and respect the size cap.
#![no_main]

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use decnet_updater::extract::extract_release;
use libfuzzer_sys::fuzz_target;

const CAP: u64 = 1 << 20;

fn walk(dir: &Path, total: &mut u64) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        let ft = meta.file_type();
        assert!(ft.is_file() || ft.is_dir(), "{:?} is neither file nor dir", e.path());
        assert_eq!(meta.permissions().mode() & 0o7000, 0, "{:?} keeps special bits", e.path());
        if ft.is_dir() {
            walk(&e.path(), total);
        } else {
            *total += meta.size();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("staging");
    std::fs::create_dir(&dest).unwrap();
    // Half the inputs as raw tar (gzip'd here), half as the uploaded bytes.
    let tarball = root.path().join("upload.tar.gz");
    if data.first().is_some_and(|b| b & 1 == 0) {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data[1..]).unwrap();
        std::fs::write(&tarball, gz.finish().unwrap()).unwrap();
    } else {
        std::fs::write(&tarball, data).unwrap();
    }
    let _ = extract_release(&tarball, &dest, CAP);
    // Nothing beside the staging dir and the upload.
    let mut names: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["staging", "upload.tar.gz"]);
    let mut total = 0;
    walk(&dest, &mut total);
    assert!(total <= CAP, "{total} bytes written past the cap");
});
