"""The repository's documents link only to files inside the repository, and
every link to a heading names a heading that exists, so that every link works
on GitHub."""

import glob
import os
import re
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
DOCS = ["README.md", "deploy/README.md", "deploy/backend/README.md", "deploy/backend/ANTENNA.md"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))
)
LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def anchors(path):
    """The anchors GitHub gives the headings of a Markdown file."""
    text = re.sub(r"(?ms)^```.*?^```", "", read(path))
    seen, out = {}, set()
    for heading in re.findall(r"(?m)^#{1,6} +(.+?) *#*$", text):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


class LinksTest(unittest.TestCase):
    def test_the_documents_exist(self):
        for doc in ["README.md", "docs/CONTRACT.md", "docs/OPERATIONS.md", "docs/SAFETY.md"]:
            self.assertIn(doc, DOCS)
            self.assertTrue(os.path.exists(os.path.join(REPO, doc)), f"{doc} is missing")

    def test_relative_links_resolve_inside_the_repository(self):
        for doc in DOCS:
            path = os.path.join(REPO, doc)
            text = read(path)
            self.assertFalse("../shared" in text, f"{doc} names ../shared")
            for link, anchor in LINK.findall(text):
                if re.match(r"[a-z]+:", link):
                    continue
                target = os.path.normpath(os.path.join(os.path.dirname(path), link)) if link else path
                with self.subTest(doc=doc, link=link, anchor=anchor):
                    self.assertTrue(target.startswith(REPO + os.sep), "leaves the repository")
                    self.assertTrue(os.path.exists(target), "does not exist")
                    if anchor and target.endswith(".md"):
                        self.assertIn(anchor, anchors(target), "no such heading")

    def test_antenna_guide_names_its_commit(self):
        text = read(os.path.join(REPO, "deploy/backend/ANTENNA.md"))
        self.assertIn("731cc2a2bdcc4f4032aafdd1fddbb04c6706e34e", text)


if __name__ == "__main__":
    unittest.main()
