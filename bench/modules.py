"""Per-module signing rates (called by ci/bench after run.py; reports, never fails).

For each PKCS#11 module of the conformance suite — SoftHSM, SoftHSM behind p11-kit's remote
module, Kryoptic, tpm2-pkcs11 on swtpm — in a temp dir of its own: hwpass's `sign --batch`
rate (2 workers) beside the module's raw C_Sign rate on one session (examples/hsm_raw_sign,
with the mechanism hwpass chose for the module), measured in the same run, RUNS times.
Prints one Markdown table with min / median / max of the ratio.
"""
import json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

from common import ISSUER, REL, ROOT, free_port_pair, sh
PIN, SO_PIN = "bench-pin-1234", "bench-so-pin-1234"
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
P11KIT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
TPM2 = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so"
KRYOPTIC_VERSION = "1.5.4"  # ci/setup-kryoptic's VERSION
KRYOPTIC = os.path.join(os.environ.get("HWPASS_CACHE", os.path.expanduser("~/.cache/hwpass")),
                        f"kryoptic-{KRYOPTIC_VERSION}", "libkryoptic_pkcs11.so")


def wait_for(ready, limit=20):
    start = time.time()
    while time.time() - start < limit:
        if ready():
            return True
        time.sleep(0.02)
    return False


class Module:
    """One module with one token `bench` in `work`; helper processes stopped by close()."""

    def __init__(self, kind, work):
        self.kind, self.work, self.procs = kind, work, []
        self.env = dict(os.environ, HWPASS_PIN=PIN, TSS2_LOG="all+none")
        getattr(self, "start_" + kind)()

    def softhsm_token(self):
        sh([f"{ROOT}/softhsm/setup-token", f"{self.work}/hsm", "bench"], env=self.env)
        return f"{self.work}/hsm/softhsm2.conf"

    def start_softhsm(self):
        self.env["SOFTHSM2_CONF"] = self.softhsm_token()
        self.module = SOFTHSM

    def start_p11kit(self):
        conf = self.softhsm_token()
        sock = f"{self.work}/p11kit.sock"
        self.procs.append(subprocess.Popen(
            ["p11-kit", "server", "--foreground", "--provider", SOFTHSM, "--name", sock,
             "pkcs11:token=bench"], env=dict(self.env, SOFTHSM2_CONF=conf),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def up():
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                s.close()
                return True
            except OSError:
                return False
        if not wait_for(up):
            raise RuntimeError("p11-kit server did not start")
        self.env["P11_KIT_SERVER_ADDRESS"] = f"unix:path={sock}"
        self.module = P11KIT

    def start_kryoptic(self):
        if not os.path.exists(KRYOPTIC):
            raise RuntimeError(f"{KRYOPTIC} missing: run ci/setup")
        conf = f"{self.work}/kryoptic.conf"
        open(conf, "w").write(f'[[slots]]\nslot = 1\ndbtype = "sqlite"\ndbargs = "{self.work}/token.sql"\n')
        self.env["KRYOPTIC_CONF"] = conf
        self.module = KRYOPTIC
        tool = ["pkcs11-tool", "--module", KRYOPTIC]
        sh(tool + ["--init-token", "--label", "bench", "--so-pin", SO_PIN], env=self.env)
        sh(tool + ["--token-label", "bench", "--login", "--login-type", "so", "--so-pin", SO_PIN,
                   "--init-pin", "--pin", PIN], env=self.env)

    def start_tpm2(self):
        port = free_port_pair()
        os.makedirs(f"{self.work}/tpm")
        self.procs.append(subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.work}/tpm",
             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                return True
            except OSError:
                return False
        if not wait_for(listening):
            raise RuntimeError("swtpm did not start")
        dbus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--nopidfile",
                                 "--print-address=1"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        self.procs.append(dbus)
        address = dbus.stdout.readline().strip()
        tcti = "tabrmd:bus_type=session"
        self.env.update(DBUS_SESSION_BUS_ADDRESS=address, TPM2_PKCS11_TCTI=tcti,
                        TPM2TOOLS_TCTI=tcti, TPM2_PKCS11_STORE=f"{self.work}/store",
                        TPM2_PKCS11_LOG_LEVEL="0")
        self.procs.append(subprocess.Popen(
            ["tpm2-abrmd", "--session", "--allow-root", f"--tcti=swtpm:host=127.0.0.1,port={port}"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if not wait_for(lambda: sh(["tpm2_getcap", "properties-fixed"], env=self.env,
                                   check=False).returncode == 0):
            raise RuntimeError("tpm2-abrmd did not start")
        os.makedirs(f"{self.work}/store")
        sh(["tpm2_ptool", "init", "--path", f"{self.work}/store"], env=self.env)
        sh(["tpm2_ptool", "addtoken", "--pid=1", f"--sopin={SO_PIN}", f"--userpin={PIN}",
            "--label=bench", "--path", f"{self.work}/store"], env=self.env)
        self.module = TPM2

    def close(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


NAMES = {"softhsm": "SoftHSM 2.6.1", "p11kit": "SoftHSM via p11-kit 0.24.1 remote module",
         "kryoptic": f"Kryoptic {KRYOPTIC_VERSION}", "tpm2": "tpm2-pkcs11 1.9.0 on swtpm 0.7.1"}
# Requests per batch and raw signatures per measurement: the TPM signs ~100× slower.
SIZES = {"softhsm": (10000, 20000), "p11kit": (5000, 10000), "kryoptic": (10000, 20000),
         "tpm2": (300, 300)}


def main():
    rows = []
    for kind in ["softhsm", "p11kit", "kryoptic", "tpm2"]:
        work = tempfile.mkdtemp(prefix=f"hwpass-bench-{kind}-")
        try:
            m = Module(kind, work)
        except Exception as e:  # a module that cannot start is reported, not hidden
            rows.append((kind, None, None, str(e)))
            shutil.rmtree(work, ignore_errors=True)
            continue
        try:
            uri = f"pkcs11:token=bench;object=issuer?module-path={m.module}"
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
            env = dict(m.env, HWPASS_CONFIG=f"{work}/issuer.toml")
            sh([ISSUER, "keygen"], env=env)
            info = json.loads(sh([ISSUER, "key-info", "--json"], env=env).stdout)
            mech = "ECDSA_SHA256" if info["quirks"]["mechanism"].startswith("CKM_ECDSA_SHA256") else "ECDSA"
            n_req, n_raw = SIZES[kind]
            reqs = sh([f"{REL}/examples/gen_requests", str(n_req), str(min(n_req, 1000)),
                       str(int(time.time()))], env=env).stdout
            raw, ours = [], []
            for run in range(RUNS):
                raw.append(float(sh([f"{REL}/examples/hsm_raw_sign", uri, str(n_raw), mech], env=env).stdout))
                for f in (f"{work}/audit.jsonl", f"{work}/audit.jsonl.checkpoint"):
                    if os.path.exists(f):
                        os.remove(f)
                t = time.perf_counter()
                sh([ISSUER, "sign", "--batch", "--workers", "2"], env=env, stdin=reqs)
                ours.append(n_req / (time.perf_counter() - t))
                print(f"bench: {kind} run {run + 1}/{RUNS}: raw {raw[-1]:.0f}/s, batch {ours[-1]:.0f}/s",
                      file=sys.stderr)
            rows.append((kind, mech, (raw, ours), None))
        except Exception as e:
            rows.append((kind, None, None, str(e)))
        finally:
            m.close()
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n### Signing rate per PKCS#11 module — {os.cpu_count()} cores, {RUNS} runs, {time.strftime('%Y-%m-%d')}\n")
    print("| module | mechanism | raw C_Sign/s, 1 session (median) | `sign --batch`/s, 2 workers (median) | ratio min / median / max | every run (batch/raw) |")
    print("|---|---|---|---|---|---|")
    for kind, mech, data, err in rows:
        if err:
            print(f"| {NAMES[kind]} | — | — | — | — | did not run: {err} |")
            continue
        raw, ours = data
        ratios = [o / r for o, r in zip(ours, raw)]
        runs = ", ".join(f"{o:.0f}/{r:.0f}" for o, r in zip(ours, raw))
        print(f"| {NAMES[kind]} | CKM_{mech} | {statistics.median(raw):.0f} | {statistics.median(ours):.0f} | "
              f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f} | {runs} |")


main()
