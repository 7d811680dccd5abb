//! Builds the page (`web/`: vite, lightweight-charts from the npm registry) into OUT_DIR and lists its
//! files for `include_bytes!`, so the binary carries its dashboard and no built or third-party code is
//! kept in git. It needs Node.js and npm when `web/` changes; without them (or with
//! TICKLAKE_SKIP_WEB=1) the page is a note saying how to get it, and the API works all the same.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: [&str; 5] = [
    "package.json",
    "package-lock.json",
    "index.html",
    "vite.config.js",
    "src",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let web = manifest.join("web");
    for s in SOURCES {
        println!("cargo:rerun-if-changed=web/{s}");
    }
    println!("cargo:rerun-if-env-changed=TICKLAKE_SKIP_WEB");
    let dist = out.join("web-dist");
    let built = if std::env::var_os("TICKLAKE_SKIP_WEB").is_some_and(|v| v != "0") {
        Err("TICKLAKE_SKIP_WEB is set".to_owned())
    } else {
        build(&web, &out, &dist)
    };
    if let Err(why) = built {
        println!(
            "cargo:warning=the dashboard page is not built ({why}); `ticklake serve` serves its API and a note in its place"
        );
        let _ = fs::remove_dir_all(&dist);
        fs::create_dir_all(&dist).expect("OUT_DIR is writable");
        fs::write(
            dist.join("index.html"),
            format!(
                "<!doctype html><meta charset=utf-8><title>ticklake</title>\
                 <p>This ticklake was built without its dashboard page ({}). Build it again on a \
                 machine with Node.js 20 and npm to get the page; the API is at \
                 <a href=\"api/openapi.json\">/api/openapi.json</a>.</p>",
                why.replace('<', "&lt;")
            ),
        )
        .expect("OUT_DIR is writable");
    }
    let mut files = Vec::new();
    list(&dist, &mut files);
    files.sort();
    let mut code = String::from(
        "/// The page's files: (path under `/`, contents).\npub(crate) static ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for f in &files {
        let rel = f
            .strip_prefix(&dist)
            .expect("listed under dist")
            .to_string_lossy()
            .replace('\\', "/");
        code.push_str(&format!(
            "    (\"/{rel}\", include_bytes!({:?})),\n",
            f.to_string_lossy()
        ));
    }
    code.push_str("];\n");
    fs::write(out.join("web_assets.rs"), code).expect("OUT_DIR is writable");
}

/// `npm ci` (when the lock file changed) and `vite build` on a copy of `web/` in OUT_DIR: a build script
/// must not write into the source tree.
fn build(web: &Path, out: &Path, dist: &Path) -> Result<(), String> {
    let work = out.join("web");
    fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    for s in SOURCES {
        copy(&web.join(s), &work.join(s)).map_err(|e| format!("copying web/{s}: {e}"))?;
    }
    let lock = fs::read(web.join("package-lock.json")).map_err(|e| e.to_string())?;
    let installed = work.join("node_modules/.ticklake-lock");
    if fs::read(&installed).ok().as_deref() != Some(&lock[..]) {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&work))?;
        fs::write(&installed, &lock).map_err(|e| e.to_string())?;
    }
    run(Command::new("npm")
        .args(["run", "--silent", "build"])
        .env("TICKLAKE_WEB_OUT", dist)
        .current_dir(&work))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "npm was not found".to_owned(),
        _ => format!("{shown}: {e}"),
    })?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        if fs::read(to).ok() == Some(fs::read(from)?) {
            return Ok(());
        }
        fs::copy(from, to).map(|_| ())
    }
}

fn list(dir: &Path, files: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                list(&p, files);
            } else {
                files.push(p);
            }
        }
    }
}
