"""The package without nats-py. nats_adapter itself is tested against the real
nats-py and a real server in test_real_nats.py."""

import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CoreWithoutDependenciesTest(unittest.TestCase):
    def test_import_pulls_in_neither_nats_nor_opentelemetry(self):
        code = ("import sys, job_status_events, job_status_events.restart, job_status_events.streams;"
                "print(sorted(m for m in sys.modules if m.split('.')[0] in ('nats', 'opentelemetry')))")
        out = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "[]")

    def test_adapter_needs_nats(self):
        code = "import sys; sys.modules['nats'] = None; import job_status_events.nats_adapter"
        out = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("ImportError: job_status_events.nats_adapter needs nats-py >= 2.6", out.stderr)


if __name__ == "__main__":
    unittest.main()
