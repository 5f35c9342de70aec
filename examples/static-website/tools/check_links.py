#!/usr/bin/env python3
"""Checks that every internal link of the Skiff demo site resolves.

    python3 examples/static-website/tools/check_links.py [SITE_DIR]

Parses every href and src in the site's HTML files (and url() in its CSS)
and checks that the target file exists inside the site: "docs/" and "/docs/"
resolve to docs/index.html, "/x" is taken from the site root, and a
"#fragment" must name an id in the target page. Links with a scheme
(https:, mailto:, data:) are not followed. Also checks that each page has a
charset, a viewport, a title and alt text on every image, and lists files
no page refers to. Exits 1 if anything is wrong.
"""

import os
import re
import sys
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit


class Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.refs = []  # (tag, attribute, value, line)
        self.ids = set()
        self.charset = False
        self.viewport = False
        self.title = False
        self.images_without_alt = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        line = self.getpos()[0]
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "name" in a:
            self.ids.add(a["name"])
        for attr in ("href", "src"):
            if a.get(attr) is not None:
                self.refs.append((tag, attr, a[attr], line))
        if tag == "meta" and (a.get("charset") or "").lower() == "utf-8":
            self.charset = True
        if tag == "meta" and a.get("name") == "viewport":
            self.viewport = True
        if tag == "title":
            self.title = True
        if tag == "img" and not (a.get("alt") or "").strip():
            self.images_without_alt.append(line)


def resolve(site, source, url):
    """The file a URL in source points to, or None for an external link."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        return None, None
    path = unquote(parts.path)
    if path == "":
        target = source
    elif path.startswith("/"):
        target = os.path.join(site, path.lstrip("/"))
    else:
        target = os.path.join(os.path.dirname(source), path)
    target = os.path.normpath(target)
    if path.endswith("/") or os.path.isdir(target):
        target = os.path.join(target, "index.html")
    return target, parts.fragment


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    site = os.path.normpath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "site"))
    files = []
    for root, _dirs, names in os.walk(site):
        for name in names:
            files.append(os.path.normpath(os.path.join(root, name)))
    files.sort()
    html = [f for f in files if f.endswith(".html")]
    css = [f for f in files if f.endswith(".css")]

    pages = {}
    for f in html:
        p = Page()
        with open(f, encoding="utf-8") as fh:
            p.feed(fh.read())
        pages[f] = p

    errors = []
    referenced = set()
    checked = 0

    def rel(f):
        return os.path.relpath(f, site)

    def check(source, where, url):
        nonlocal checked
        target, fragment = resolve(site, source, url)
        if target is None:
            return
        checked += 1
        if os.path.commonpath([site, target]) != site:
            errors.append(f"{where}: {url!r} leaves the site")
            return
        if not os.path.isfile(target):
            errors.append(f"{where}: {url!r} -> {rel(target)} does not exist")
            return
        if target != source:
            referenced.add(target)
        if fragment and target in pages and fragment not in pages[target].ids:
            errors.append(f"{where}: {url!r}: no id {fragment!r} in {rel(target)}")

    for f, p in pages.items():
        for _tag, _attr, value, line in p.refs:
            check(f, f"{rel(f)}:{line}", value)
        if not p.charset:
            errors.append(f"{rel(f)}: no <meta charset=\"utf-8\">")
        if not p.viewport:
            errors.append(f"{rel(f)}: no viewport meta")
        if not p.title:
            errors.append(f"{rel(f)}: no <title>")
        for line in p.images_without_alt:
            errors.append(f"{rel(f)}:{line}: <img> without alt text")

    for f in css:
        with open(f, encoding="utf-8") as fh:
            text = fh.read()
        for m in re.finditer(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)", text):
            line = text.count("\n", 0, m.start()) + 1
            check(f, f"{rel(f)}:{line}", m.group(1))

    # Files nothing links to are not errors (404.html is served by the
    # server, robots.txt is fetched by crawlers), but are worth seeing.
    unreferenced = [rel(f) for f in files if f not in referenced and not f.endswith("/index.html")
                    and rel(f) != "index.html"]

    print(f"checked {checked} internal links in {len(html)} HTML and {len(css)} CSS files")
    if unreferenced:
        print("not linked from any page: " + ", ".join(unreferenced))
    if errors:
        for e in errors:
            print("error: " + e)
        print(f"{len(errors)} problem(s)")
        return 1
    print("all internal links resolve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
