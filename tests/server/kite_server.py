"""What the `kite serve` end-to-end tests share: assertions, building a random-weight CPU engine,
and a `kite serve` process on a free port."""

import os
import re
import signal
import subprocess
import urllib.request


def fail(message):
    raise AssertionError(message)


def check(condition, message):
    if not condition:
        fail(message)


def convert_and_build(kite, model_dir, work, build_arguments):
    """`kite convert --random` of model_dir (float32), then `kite build --device cpu` with
    build_arguments; returns the engine folder (work/tiny)."""
    checkpoint = os.path.join(work, "checkpoint")
    engine = os.path.join(work, "tiny")
    for command in (
        [kite, "convert", "--random", "--dtype", "float32", "--model_dir", model_dir,
         "--output_dir", checkpoint],
        [kite, "build", "--checkpoint_dir", checkpoint, "--output_dir", engine, "--device", "cpu",
         *build_arguments],
    ):
        result = subprocess.run(command, capture_output=True, text=True)
        check(result.returncode == 0,
              f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return engine


def die_with_parent():
    """Runs in the server's process before exec: SIGTERM when the test dies, even by SIGKILL
    (a CTest timeout), so no server outlives its test."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


class Server:
    """`kite serve --api_key api_key` on a free port; its URL comes from the line it prints when
    ready."""

    def __init__(self, kite, engine, work, api_key):
        self.kite = kite
        self.engine = engine
        self.api_key = api_key
        self.stderr_path = os.path.join(work, "serve.stderr")
        self.stderr = open(self.stderr_path, "w")
        self.process = subprocess.Popen(
            [kite, "serve", "--engine_dir", engine, "--port", "0", "--api_key", api_key],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True, preexec_fn=die_with_parent)
        line = self.process.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:(\d+))$", line.strip())
        if not match:
            self.process.kill()
            fail(f"no URL line from kite serve: {line!r}\n{self.log()}")
        self.url = match.group(1)
        self.port = int(match.group(2))

    def log(self):
        self.stderr.flush()
        with open(self.stderr_path) as f:
            return f.read()

    def metrics(self):
        """The /metrics samples, by series (name and labels)."""
        request = urllib.request.Request(self.url + "/metrics",
                                         headers={"Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            check(response.status == 200, f"/metrics: {response.status}")
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, value = line.rsplit(" ", 1)
                samples[series] = float(value)
        return samples

    def stop(self):
        """SIGTERM; returns the exit status. Fails when the server does not stop within 20 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            fail("kite serve did not stop within 20 s of SIGTERM")
