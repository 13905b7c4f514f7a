#!/usr/bin/env python3
"""Static look at spar's NVRTC kernels without a GPU: compiles kernels/src's module as cuda.rs does (NVRTC,
compute_90), assembles it for sm_90 with the torch wheel's ptxas, and prints each named kernel's registers, spills
and shared memory, and its SASS instruction count by opcode (with --range START END, hex addresses of
`cuobjdump -sass`, only that stretch: e.g. one loop body). A kernel change that adds spills or instructions shows
here before a device call.

  python3 scripts/kernel-sass.py decode_attention_async_bf16_d128_h2 decode_attention_halves_bf16_d128_h2
  python3 scripts/kernel-sass.py decode_attention_halves_bf16_d128_h2 --dump /tmp/h2.sass
Needs the venv of scripts/bootstrap.sh (NVRTC in nvidia/cu13/lib, ptxas in torch/bin, cuobjdump in triton)."""
import argparse, collections, ctypes, glob, os, re, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = glob.glob(os.path.join(os.environ.get("SPAR_VENV", os.path.join(ROOT, ".venv")), "lib/python3*/site-packages"))


def tool(*parts):
    for site in SITE:
        p = os.path.join(site, *parts)
        if os.path.exists(p):
            return p
    sys.exit(f"kernel-sass: {os.path.join(*parts)} not found under {SITE} (run scripts/bootstrap.sh)")


def module_source():
    src_dir = os.path.join(ROOT, "kernels/src")
    rs = open(os.path.join(src_dir, "cuda.rs")).read()
    head = rs.split('const SOURCE: &str = r#"', 1)[1].split('"#;', 1)[0]
    # The files cuda.rs's module_source() appends, read from it so that the two cannot drift apart.
    body = rs.split("pub fn module_source()", 1)[1].split("\n}\n", 1)[0]
    files = re.findall(r'include_str!\("([^"]+)"\)', body)
    if not files:
        sys.exit("kernel-sass: no include_str! in kernels/src/cuda.rs's module_source()")
    return head + "\n" + "\n".join(open(os.path.join(src_dir, f)).read() for f in files)


def ptx(source):
    lib_dir = os.path.dirname(tool("nvidia/cu13/lib/libnvrtc.so.13"))
    # libnvrtc loads its builtins by name: preload them from the same folder.
    for b in sorted(glob.glob(os.path.join(lib_dir, "libnvrtc-builtins.so*"))):
        ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
    nvrtc = ctypes.CDLL(os.path.join(lib_dir, "libnvrtc.so.13"))
    prog = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"spar.cu", 0, None, None):
        sys.exit("kernel-sass: nvrtcCreateProgram failed")
    opts = (ctypes.c_char_p * 1)(b"--gpu-architecture=compute_90")
    rc = nvrtc.nvrtcCompileProgram(prog, 1, opts)
    n = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    if rc:
        sys.exit("kernel-sass: NVRTC rejects the module:\n" + log.value.decode())
    nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(n))
    out = ctypes.create_string_buffer(n.value)
    nvrtc.nvrtcGetPTX(prog, out)
    return out.value


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kernels", nargs="+")
    ap.add_argument("--range", nargs=2, metavar=("START", "END"), help="hex SASS addresses [START, END)")
    ap.add_argument("--dump", help="write the (last) kernel's SASS here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        p, cubin = os.path.join(tmp, "m.ptx"), os.path.join(tmp, "m.cubin")
        open(p, "wb").write(ptx(module_source()))
        info = subprocess.run([tool("torch/bin/ptxas"), "-arch=sm_90", "-v", p, "-o", cubin],
                              capture_output=True, text=True)
        if info.returncode:
            sys.exit("kernel-sass: ptxas failed:\n" + info.stderr)
        lines = info.stderr.splitlines()
        for k in a.kernels:
            at = next((i for i, l in enumerate(lines) if f"entry function '{k}'" in l), None)
            if at is None:
                print(f"{k}: no such kernel in the module")
                continue
            props = " ".join(l.split(":", 1)[-1].strip() for l in lines[at + 1:at + 4] if "Function properties" not in l)
            sass = subprocess.run([tool("triton/backends/nvidia/bin/cuobjdump"), "-sass", "-fun", k, cubin],
                                  capture_output=True, text=True).stdout
            if a.dump:
                open(a.dump, "w").write(sass)
            lo, hi = (int(a.range[0], 16), int(a.range[1], 16)) if a.range else (0, 1 << 62)
            ops = collections.Counter()
            for l in sass.splitlines():
                m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s*(.*)", l)
                if m and lo <= int(m.group(1), 16) < hi:
                    ops[re.sub(r"^@!?U?P[0-9T]\s*", "", m.group(2)).split()[0].split(".")[0]] += 1
            print(f"{k}: {props}")
            print(f"  {sum(ops.values())} instructions: " + " ".join(f"{o} {c}" for o, c in ops.most_common(14)))


if __name__ == "__main__":
    main()
