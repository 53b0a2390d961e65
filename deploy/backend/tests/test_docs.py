"""The module's documents link only to files inside the repository, so
that every link works on GitHub."""

import os
import re
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
DOCS = ["README.md", "docs/CONTRACT.md", "deploy/backend/README.md", "deploy/backend/ANTENNA.md"]


class LinksTest(unittest.TestCase):
    def test_relative_links_resolve_inside_the_repository(self):
        for doc in DOCS:
            path = os.path.join(REPO, doc)
            if not os.path.exists(path):
                self.fail(f"{doc} is missing")
            text = open(path, encoding="utf-8").read()
            self.assertNotIn("../shared", text.replace("../shared/third_party", ""), doc)
            for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
                if re.match(r"[a-z]+:", link):
                    continue
                target = os.path.normpath(os.path.join(os.path.dirname(path), link))
                with self.subTest(doc=doc, link=link):
                    self.assertTrue(target.startswith(REPO + os.sep), "leaves the repository")
                    self.assertTrue(os.path.exists(target), "does not exist")

    def test_antenna_guide_names_its_commit(self):
        text = open(os.path.join(REPO, "deploy/backend/ANTENNA.md"), encoding="utf-8").read()
        self.assertIn("731cc2a2bdcc4f4032aafdd1fddbb04c6706e34e", text)


if __name__ == "__main__":
    unittest.main()
