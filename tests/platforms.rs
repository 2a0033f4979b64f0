//! The native runtimes of every platform ferroserve builds on, checked against the real PyPI
//! wheels: `scripts/native-deps.sh` runs for linux-x86_64, linux-aarch64 and macos-arm64
//! (`FERROSERVE_PLATFORM`, whatever the host) and fetches and unpacks what its plan names.
//! Every file of the plan must come out, be built for that platform, and find each library it
//! needs among the others or the system's. Only the loading on a Mac or an arm64 host itself
//! cannot be run here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use goblin::elf::Elf;
use goblin::mach::{cputype, Mach};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// `native-deps.sh` with `args` for `platform`, in that platform's own deps directory.
fn native_deps(platform: &str, deps: &Path, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(Path::new(REPO).join("scripts/native-deps.sh"))
        .args(args)
        .env("FERROSERVE_PLATFORM", platform)
        .env("FERROSERVE_DEPS_DIR", deps)
        .output()
        .expect("bash runs scripts/native-deps.sh");
    assert!(
        out.status.success(),
        "native-deps.sh {args:?} for {platform}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The platform's libraries, in a cache beside the host's own (native-deps.sh fetches again
/// only when its plan changes), with the plan and the paths `--env` exports.
fn fetched(platform: &str) -> (String, PathBuf, PathBuf) {
    let cache = std::env::var_os("FERROSERVE_DEPS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ferroserve/deps")
        })
        .join("platforms")
        .join(platform);
    let plan = native_deps(platform, &cache, &["--plan"]);
    let env = native_deps(platform, &cache, &["--env"]);
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}='")))
            .and_then(|v| v.strip_suffix('\''))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{name} in native-deps.sh --env:\n{env}"))
    };
    (plan, var("LIBTORCH"), var("ORT_DYLIB_PATH"))
}

/// What a loader of `platform` finds without the deps directory.
fn is_system_library(platform: &str, name: &str) -> bool {
    if platform.starts_with("macos") {
        return name.starts_with("/usr/lib/") || name.starts_with("/System/Library/");
    }
    let glibc = [
        "libc.so.6",
        "libm.so.6",
        "libdl.so.2",
        "libpthread.so.0",
        "librt.so.1",
        "libutil.so.1",
        "libstdc++.so.6",
        "libgcc_s.so.1",
    ];
    glibc.contains(&name) || name.starts_with("ld-linux")
}

/// A library's architecture, the libraries it asks for and its run paths.
struct Linked {
    arch: &'static str,
    needs: Vec<String>,
    run_paths: Vec<String>,
}

fn linked(path: &Path) -> Linked {
    let bytes = std::fs::read(path).unwrap();
    let what = |e: goblin::error::Error| -> ! { panic!("{}: {e}", path.display()) };
    if bytes.starts_with(b"\x7fELF") {
        let elf = Elf::parse(&bytes).unwrap_or_else(|e| what(e));
        return Linked {
            arch: match elf.header.e_machine {
                goblin::elf::header::EM_X86_64 => "x86_64",
                goblin::elf::header::EM_AARCH64 => "aarch64",
                _ => "other",
            },
            needs: elf.libraries.iter().map(|s| s.to_string()).collect(),
            run_paths: elf
                .runpaths
                .iter()
                .chain(&elf.rpaths)
                .flat_map(|p| p.split(':'))
                .map(str::to_string)
                .collect(),
        };
    }
    match Mach::parse(&bytes).unwrap_or_else(|e| what(e)) {
        Mach::Binary(macho) => Linked {
            arch: match macho.header.cputype {
                cputype::CPU_TYPE_ARM64 => "arm64",
                cputype::CPU_TYPE_X86_64 => "x86_64",
                _ => "other",
            },
            // `libs` starts with the library's own name ("self").
            needs: macho
                .libs
                .iter()
                .filter(|l| **l != "self" && Some(**l) != macho.name)
                .map(|s| s.to_string())
                .collect(),
            run_paths: macho.rpaths.iter().map(|s| s.to_string()).collect(),
        },
        Mach::Fat(_) => panic!("{}: a universal Mach-O, not arm64 alone", path.display()),
    }
}

fn check_platform(platform: &str, arch: &str) {
    let (plan, libtorch, ort) = fetched(platform);
    let lib = libtorch.join("lib");
    let ort_dir = ort.parent().unwrap().to_path_buf();
    assert!(
        libtorch.join("include/torch/script.h").is_file(),
        "{platform}: libtorch's headers"
    );
    // Every file of the plan came out of its wheel.
    let mut planned = BTreeSet::new();
    for line in plan.lines().filter(|l| l.starts_with("wheel ")) {
        let member = line.rsplit(' ').next().unwrap();
        if member.ends_with('/') {
            continue;
        }
        let name = Path::new(member).file_name().unwrap().to_str().unwrap();
        let dir = if member.starts_with("onnxruntime/") {
            &ort_dir
        } else {
            &lib
        };
        assert!(
            dir.join(name).is_file(),
            "{platform}: {member} not unpacked"
        );
        planned.insert(name.to_string());
    }
    let link = plan
        .lines()
        .find_map(|l| l.strip_prefix("link "))
        .unwrap_or_else(|| panic!("{platform}: no link line in the plan"));
    let (name, target) = link.split_once(' ').unwrap();
    assert_eq!(ort.file_name().unwrap(), name, "{platform}: ORT_DYLIB_PATH");
    assert_eq!(std::fs::read_link(&ort).unwrap(), Path::new(target));

    // Each library is the platform's and finds what it needs.
    let present: BTreeSet<String> = std::fs::read_dir(&lib)
        .unwrap()
        .chain(std::fs::read_dir(&ort_dir).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(planned.is_subset(&present));
    let mut libraries: Vec<PathBuf> = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    libraries.push(ort.canonicalize().unwrap());
    for path in libraries {
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        let linked = linked(&path);
        assert_eq!(linked.arch, arch, "{platform}: {file}'s architecture");
        for need in &linked.needs {
            let sibling = need.strip_prefix("@rpath/").unwrap_or(need);
            if present.contains(sibling) {
                // Found beside it: through its own run path ($ORIGIN, @loader_path).
                let own = if platform.starts_with("macos") {
                    "@loader_path"
                } else {
                    "$ORIGIN"
                };
                assert!(
                    linked
                        .run_paths
                        .iter()
                        .any(|p| p.trim_end_matches('/') == own),
                    "{platform}: {file} needs {need} beside it but its run paths are {:?}",
                    linked.run_paths
                );
                continue;
            }
            assert!(
                is_system_library(platform, need),
                "{platform}: {file} needs {need}, which is neither unpacked nor a system library"
            );
        }
    }
}

#[test]
fn linux_x86_64_libraries_come_from_the_wheels_complete() {
    check_platform("linux-x86_64", "x86_64");
}

#[test]
fn linux_aarch64_libraries_come_from_the_wheels_complete() {
    check_platform("linux-aarch64", "aarch64");
}

#[test]
fn macos_arm64_libraries_come_from_the_wheels_complete() {
    check_platform("macos-arm64", "arm64");
}

/// The binary finds libtorch through its run path: the deps directory it was built against,
/// and `lib/` beside `bin/` for packaged installs (build.rs).
#[cfg(target_os = "linux")]
#[test]
fn the_binary_carries_its_run_paths() {
    let linked = linked(Path::new(env!("CARGO_BIN_EXE_ferroserve")));
    let libtorch = std::env::var("LIBTORCH").expect("LIBTORCH (scripts/env.sh exports it)");
    let expected = [format!("{libtorch}/lib"), "$ORIGIN/../lib".to_string()];
    for path in expected {
        assert!(
            linked.run_paths.contains(&path),
            "{path} missing from {:?}",
            linked.run_paths
        );
    }
    assert!(linked.needs.iter().any(|n| n == "libtorch_cpu.so"));
    assert!(!linked.needs.iter().any(|n| n == "libtorch_cuda.so"));
}

/// The Python worker's environment (scripts/python-env.sh) resolves to binary wheels on each
/// platform: uv resolves the requirements with that platform's markers and wheel tags (pip
/// evaluates markers for the host only). macOS gets PyPI's MPS build of torch, without the
/// NVIDIA wheels Linux's pulls in.
#[test]
fn the_python_worker_environment_resolves_on_every_platform() {
    let out = Command::new("bash")
        .arg(Path::new(REPO).join("scripts/python-env.sh"))
        .arg("--requirements")
        .output()
        .unwrap();
    assert!(out.status.success());
    let requirements = String::from_utf8(out.stdout).unwrap().replace(' ', "\n");
    for platform in [
        "x86_64-manylinux_2_28",
        "aarch64-manylinux_2_28",
        "aarch64-apple-darwin",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("requirements.in");
        std::fs::write(&input, &requirements).unwrap();
        let out = Command::new("uv")
            .args([
                "pip",
                "compile",
                "--quiet",
                "--no-header",
                "--only-binary",
                ":all:",
            ])
            .args(["--python-version", "3.12", "--python-platform", platform])
            .arg(&input)
            // PyPI's torch for macOS is built for macOS 14 and later.
            .env("MACOSX_DEPLOYMENT_TARGET", "14.0")
            .output()
            .expect("uv (scripts/test.sh installs it)");
        let lock = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{platform}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for pin in ["torch==2.13.0", "torchserve==0.12.0", "onnxruntime==1.31.1"] {
            assert!(
                lock.lines().any(|l| l == pin),
                "{platform}: {pin} in\n{lock}"
            );
        }
        let nvidia = lock.lines().any(|l| l.starts_with("nvidia-"));
        assert_eq!(nvidia, platform.contains("linux"), "{platform}:\n{lock}");
    }
}

/// Every platform's branch of the set-up scripts, and the scripts themselves, pass shellcheck.
#[test]
fn shellcheck_accepts_the_set_up_scripts() {
    let scripts = [
        "start.sh",
        "scripts/env.sh",
        "scripts/native-deps.sh",
        "scripts/python-env.sh",
        "scripts/test.sh",
        "scripts/soak.sh",
        "scripts/fuzz.sh",
        "scripts/cross-arm64.sh",
    ];
    let out = Command::new("shellcheck")
        .arg("-x")
        .args(scripts)
        .current_dir(REPO)
        .output()
        .expect("shellcheck (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
