"""hwpass benchmarks, side by side on this machine (called by ci/bench; reports, never fails).

Prints one Markdown table: figure, ours, baseline, ratio, goal, met — medians of RUNS runs —
then the batch-size and worker-count scaling. Needs the release build and the examples.
"""
import json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

from common import HWPASS, ISSUER, REL, ROOT, CommandFailed, free_port_pair as free_port
from common import sh as run_checked

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "bench-pin-1234"
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def sh(cmd, env=None, stdin=None, check=True):
    try:
        return run_checked(cmd, env=env, stdin=stdin, check=check)
    except CommandFailed as e:
        raise SystemExit(f"bench: {' '.join(e.cmd)} failed: {e.stderr}")


def timed(cmd, env=None, stdin=None):
    t = time.perf_counter()
    sh(cmd, env=env, stdin=stdin)
    return time.perf_counter() - t


def main():
    work = tempfile.mkdtemp(prefix="hwpass-bench-")
    env = dict(os.environ, HWPASS_PIN=PIN, SOFTHSM2_CONF=f"{work}/hsm/softhsm2.conf",
               HWPASS_CONFIG=f"{work}/issuer.toml", TSS2_LOG="all+none")
    sh([f"{ROOT}/softhsm/setup-token", f"{work}/hsm", "bench"], env=env)
    uri = f"pkcs11:token=bench;object=issuer?module-path={MODULE}"
    open(f"{work}/issuer.toml", "w").write(f'''issuer = "bench"
audience = "bench"
audit_log = "audit.jsonl"
[key]
uri = "{uri}"
[policy]
default_lifetime = "1d"
max_lifetime = "7d"
allow_software = true
software_max_lifetime = "2d"
''')
    sh([ISSUER, "keygen"], env=env)
    now = str(int(time.time()))
    reqs = sh([f"{REL}/examples/gen_requests", "10000", "1000", now], env=env).stdout
    open(f"{work}/req.txt", "w").write(reqs)
    open(f"{work}/req3k.txt", "w").write("".join(reqs.splitlines(True)[:3000]))

    def batch_rate(n_lines, workers):
        lines = "".join(reqs.splitlines(True)[:n_lines])
        # A fresh log each run: the log and its checkpoint (a log shorter than its checkpoint
        # says is a cut log, and refused).
        for f in (f"{work}/audit.jsonl", f"{work}/audit.jsonl.checkpoint"):
            if os.path.exists(f):
                os.remove(f)
        t = timed([ISSUER, "sign", "--batch", "--workers", str(workers)], env=env, stdin=lines)
        return n_lines / t

    rows = {k: [] for k in ["L", "ours", "ours1", "python", "p11tool", "check", "tpm2_sign", "rss"]}
    digest = f"{work}/digest"
    open(digest, "wb").write(b"\x5a" * 32)
    have_python = sh([sys.executable, "-c", "import pkcs11, cryptography"], check=False).returncode == 0

    # TPM side: one swtpm, one enrolled desktop with a pass, one tpm2-tools key for tpm2_sign.
    tpm_dir = f"{work}/tpm"
    os.makedirs(tpm_dir)
    port = free_port()
    swtpm = subprocess.Popen(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tpm_dir}",
                              "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                              "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                              "--flags", "not-need-init,startup-clear"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.01)
        tcti = f"swtpm:host=127.0.0.1,port={port}"
        tenv = dict(env, HWPASS_TCTI=tcti, TPM2TOOLS_TCTI=tcti)
        sh([ISSUER, "jwks"], env=env)
        open(f"{work}/jwks", "w").write(sh([ISSUER, "jwks"], env=env).stdout)
        desk = ["--state-dir", f"{work}/desk"]
        sh([HWPASS, *desk, "enroll", "--backend", "tpm", "--trust", f"{work}/jwks"], env=tenv)
        tpm_req = sh([HWPASS, *desk, "request", "--subject", "bench@corp"], env=tenv).stdout.strip()
        tpm_pass = sh([ISSUER, "sign", "-"], env=env, stdin=tpm_req).stdout.strip()
        sh([HWPASS, *desk, "install", "-"], env=tenv, stdin=tpm_pass)
        for c in (["tpm2_createprimary", "-C", "o", "-c", f"{work}/p.ctx", "-Q"],
                  ["tpm2_create", "-C", f"{work}/p.ctx", "-G", "ecc256:ecdsa", "-u", f"{work}/k.pub", "-r", f"{work}/k.priv", "-Q"],
                  ["tpm2_flushcontext", "-t"],
                  ["tpm2_load", "-C", f"{work}/p.ctx", "-u", f"{work}/k.pub", "-r", f"{work}/k.priv", "-c", f"{work}/k.ctx", "-Q"],
                  ["tpm2_flushcontext", "-t"]):
            sh(c, env=tenv)
        soft_req = reqs.splitlines()[0]
        soft_pass = sh([ISSUER, "sign", "-"], env=env, stdin=soft_req).stdout.strip()

        for run in range(RUNS):
            rows["L"].append(float(sh([f"{REL}/examples/hsm_raw_sign", uri, "20000"], env=env).stdout))
            rows["ours"].append(batch_rate(10000, 2))
            rows["ours1"].append(batch_rate(10000, 1))
            if have_python:
                r = sh([sys.executable, f"{ROOT}/bench/python_issuer.py", MODULE, "bench", "issuer",
                        f"{work}/req3k.txt", f"{work}/py-audit"], env=env)
                rows["python"].append(float(r.stderr.strip().splitlines()[-1]))
            n = 50
            t = sum(timed(["pkcs11-tool", "--module", MODULE, "--token-label", "bench", "--login",
                           "--pin", PIN, "--sign", "--mechanism", "ECDSA", "--label", "issuer",
                           "-i", digest, "-o", f"{work}/sig"], env=env) for _ in range(n))
            rows["p11tool"].append(n / t)
            rows["check"].append(statistics.median(timed([HWPASS, *desk, "check"], env=tenv) for _ in range(15)))
            def tpm2_sign():
                t = timed(["tpm2_sign", "-c", f"{work}/k.ctx", "-g", "sha256", "-o", f"{work}/tsig", digest], env=tenv)
                # Without a resource manager tpm2_sign leaves its key loaded; flush, untimed.
                sh(["tpm2_flushcontext", "-t"], env=tenv)
                return t
            rows["tpm2_sign"].append(statistics.median(tpm2_sign() for _ in range(15)))
            rss = sh(["/usr/bin/time", "-f", "%M", HWPASS, *desk, "check"], env=tenv).stderr.strip().splitlines()[-1]
            rows["rss"].append(int(rss) / 1024)
            print(f"bench: run {run + 1}/{RUNS} done", file=sys.stderr)

        med = {k: statistics.median(v) if v else None for k, v in rows.items()}
        cores = os.cpu_count()
        print(f"### hwpass benchmark — {cores} cores, medians of {RUNS} runs, {time.strftime('%Y-%m-%d')}\n")
        print("| figure | ours | baseline | ratio | goal | met |")
        print("|---|---|---|---|---|---|")

        def row(fig, ours, base, ratio, goal, met):
            print(f"| {fig} | {ours} | {base} | {ratio} | {goal} | {'yes' if met else 'no'} |")

        L = med["L"]
        # The ratio of each run (ours and L measured in the same run), min / median / max.
        ratios = [o / l for o, l in zip(rows["ours"], rows["L"])]
        rmin, rmed, rmax = min(ratios), statistics.median(ratios), max(ratios)
        row("passes/s, `sign --batch`, 2 workers, 10 000 requests", f"{med['ours']:.0f}", f"L = {L:.0f} raw C_Sign/s",
            f"{rmin:.2f} / {rmed:.2f} / {rmax:.2f} (min / median / max)", "median ≥ 0.8 × L, min ≥ 0.75",
            rmed >= 0.8 and rmin >= 0.75)
        row("passes/s vs one `pkcs11-tool --sign` per pass", f"{med['ours']:.0f}", f"{med['p11tool']:.0f}",
            f"{med['ours'] / med['p11tool']:.0f}×", "≥ 50×", med["ours"] >= 50 * med["p11tool"])
        if med["python"]:
            row("passes/s vs python-pkcs11 + cryptography", f"{med['ours']:.0f}", f"{med['python']:.0f}",
                f"{med['ours'] / med['python']:.2f}×", "≥ 1.5×", med["ours"] >= 1.5 * med["python"])
        else:
            row("passes/s vs python-pkcs11 + cryptography", f"{med['ours']:.0f}", "not installed", "—", "≥ 1.5×", False)
        row("`hwpass check` (TPM-bound, whole process) vs one `tpm2_sign` process", f"{med['check'] * 1000:.1f} ms",
            f"{med['tpm2_sign'] * 1000:.1f} ms", f"{med['check'] / med['tpm2_sign']:.2f}×", "≤ 2×",
            med["check"] <= 2 * med["tpm2_sign"])
        row("peak memory of `hwpass check`", f"{med['rss']:.1f} MiB", "—", "—", "< 16 MiB", med["rss"] < 16)
        row("pass size (characters)", str(len(soft_pass)), "—", "—", "≤ 600", len(soft_pass) <= 600)
        row("request without attestation (software key)", str(len(soft_req)), "—", "—", "≤ 700", len(soft_req) <= 700)
        row("TPM request with attestation evidence (EK public; no EK certificate here)", str(len(tpm_req)), "—", "—", "≤ 2 900", len(tpm_req) <= 2900)
        print("\nEvery run, `sign --batch` / L: " + ", ".join(
            f"{o:.0f}/{l:.0f} = {o / l:.2f}" for o, l in zip(rows["ours"], rows["L"])) + ".")
        print(f"\n1 worker: {med['ours1']:.0f} passes/s. ", end="")
        sizes = []
        for n in (1, 100, 10000):
            t = statistics.median([1 / batch_rate(n, 2) * n for _ in range(3)])
            sizes.append(f"{n}: {t * 1000:.0f} ms ({n / t:.0f}/s)")
        print("Batch of " + "; ".join(sizes) + " (2 workers, including process start, HSM login and one audit fsync per 1 024).")
    finally:
        swtpm.send_signal(signal.SIGTERM)
        swtpm.wait()
        shutil.rmtree(work, ignore_errors=True)


main()
