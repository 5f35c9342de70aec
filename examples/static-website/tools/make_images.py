#!/usr/bin/env python3
"""Draws the raster images of the Skiff demo site.

Only the standard library: pixels are computed in Python and written as
8-bit RGB PNG files with zlib and struct. The output is deterministic, so
running this again reproduces the committed files byte for byte.

    python3 examples/static-website/tools/make_images.py [SITE_DIR]

SITE_DIR defaults to ../site next to this script. Writes:

    img/hero.png          the front page's banner: a skiff on a night sea
    img/architecture.png  the layers, from the service down to KVM
    img/networking.png    the two ways a NIC reaches the host
"""

import math
import os
import struct
import sys
import zlib

# --------------------------------------------------------------------------
# PNG writing


def _chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    if pb <= pc:
        return b
    return c


def _filter_rows(rows, bpp):
    """Per row, picks the PNG filter with the smallest sum of absolute values."""
    out = bytearray()
    prev = bytes(len(rows[0]))
    for row in rows:
        n = len(row)
        cands = []
        cands.append((0, bytes(row)))
        cands.append((1, bytes((row[i] - (row[i - bpp] if i >= bpp else 0)) & 0xFF for i in range(n))))
        cands.append((2, bytes((row[i] - prev[i]) & 0xFF for i in range(n))))
        cands.append((3, bytes((row[i] - (((row[i - bpp] if i >= bpp else 0) + prev[i]) >> 1)) & 0xFF
                               for i in range(n))))
        cands.append((4, bytes((row[i] - _paeth(row[i - bpp] if i >= bpp else 0, prev[i],
                                                 prev[i - bpp] if i >= bpp else 0)) & 0xFF
                               for i in range(n))))

        def cost(c):
            return sum(v if v < 128 else 256 - v for v in c[1])

        kind, data = min(cands, key=cost)
        out.append(kind)
        out += data
        prev = row
    return bytes(out)


def write_png(path, width, height, pixels):
    """pixels: a bytearray of width*height*3 RGB bytes, rows top to bottom."""
    stride = width * 3
    rows = [pixels[y * stride:(y + 1) * stride] for y in range(height)]
    raw = _filter_rows(rows, 3)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n"
    data += _chunk(b"IHDR", ihdr)
    data += _chunk(b"IDAT", zlib.compress(raw, 9))
    data += _chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


# --------------------------------------------------------------------------
# A canvas with the few shapes the images need


class Canvas:
    def __init__(self, width, height, color=(255, 255, 255)):
        self.w = width
        self.h = height
        self.px = bytearray(bytes(color) * (width * height))

    def get(self, x, y):
        i = (y * self.w + x) * 3
        return self.px[i], self.px[i + 1], self.px[i + 2]

    def set(self, x, y, c):
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(c)

    def blend(self, x, y, c, a):
        if a <= 0 or not (0 <= x < self.w and 0 <= y < self.h):
            return
        if a >= 1:
            self.set(x, y, c)
            return
        r, g, b = self.get(x, y)
        self.set(x, y, (round(r + (c[0] - r) * a), round(g + (c[1] - g) * a), round(b + (c[2] - b) * a)))

    def rect(self, x0, y0, x1, y1, c):
        for y in range(max(0, y0), min(self.h, y1)):
            i = (y * self.w + max(0, x0)) * 3
            n = min(self.w, x1) - max(0, x0)
            if n > 0:
                self.px[i:i + 3 * n] = bytes(c) * n

    def round_rect(self, x0, y0, x1, y1, r, fill, border=None, bw=2):
        """A rounded rectangle, edges smoothed by 4x4 supersampling at the corners."""
        def inside(px, py, inset):
            ax0, ay0, ax1, ay1, rr = x0 + inset, y0 + inset, x1 - inset, y1 - inset, max(0, r - inset)
            if px < ax0 or px > ax1 or py < ay0 or py > ay1:
                return False
            cx = min(max(px, ax0 + rr), ax1 - rr)
            cy = min(max(py, ay0 + rr), ay1 - rr)
            return (px - cx) ** 2 + (py - cy) ** 2 <= rr * rr

        for y in range(y0, y1):
            for x in range(x0, x1):
                corner = (x < x0 + r or x >= x1 - r) and (y < y0 + r or y >= y1 - r)
                samples = [(x + (i + 0.5) / 4, y + (j + 0.5) / 4) for i in range(4) for j in range(4)] \
                    if corner else [(x + 0.5, y + 0.5)]
                n = len(samples)
                outer = sum(inside(sx, sy, 0) for sx, sy in samples) / n
                if outer == 0:
                    continue
                if border is None:
                    self.blend(x, y, fill, outer)
                    continue
                inner = sum(inside(sx, sy, bw) for sx, sy in samples) / n
                self.blend(x, y, border, outer)
                self.blend(x, y, fill, inner / outer if outer else 0)

    def hline(self, x0, x1, y, c, t=2, dash=0):
        for x in range(x0, x1):
            if dash and (x - x0) // dash % 2:
                continue
            for k in range(t):
                self.set(x, y + k, c)

    def vline(self, x, y0, y1, c, t=2):
        for y in range(y0, y1):
            for k in range(t):
                self.set(x + k, y, c)

    def triangle(self, pts, c, ss=4):
        """A filled triangle, supersampled for smooth edges."""
        (ax, ay), (bx, by), (cx, cy) = pts

        def edge(px, py, qx, qy, x, y):
            return (qx - px) * (y - py) - (qy - py) * (x - px)

        area = edge(ax, ay, bx, by, cx, cy)
        xs0, xs1 = int(min(ax, bx, cx)), int(math.ceil(max(ax, bx, cx)))
        ys0, ys1 = int(min(ay, by, cy)), int(math.ceil(max(ay, by, cy)))
        for y in range(ys0, ys1 + 1):
            for x in range(xs0, xs1 + 1):
                hit = 0
                for i in range(ss):
                    for j in range(ss):
                        sx, sy = x + (i + 0.5) / ss, y + (j + 0.5) / ss
                        w0 = edge(bx, by, cx, cy, sx, sy)
                        w1 = edge(cx, cy, ax, ay, sx, sy)
                        w2 = edge(ax, ay, bx, by, sx, sy)
                        if area > 0:
                            ok = w0 >= 0 and w1 >= 0 and w2 >= 0
                        else:
                            ok = w0 <= 0 and w1 <= 0 and w2 <= 0
                        hit += ok
                self.blend(x, y, c, hit / (ss * ss))

    def arrow_down(self, x, y0, y1, c, t=3, head=9):
        self.vline(x - t // 2, y0, y1 - head, c, t)
        self.triangle([(x - head + 0.5, y1 - head), (x + head + 0.5, y1 - head), (x + 0.5, y1)], c)

    def arrow_up(self, x, y0, y1, c, t=3, head=9):
        """From y1 (bottom) up to y0 (tip)."""
        self.vline(x - t // 2, y0 + head, y1, c, t)
        self.triangle([(x - head + 0.5, y0 + head), (x + 0.5, y0), (x + head + 0.5, y0 + head)], c)

    def arrow_right(self, x0, x1, y, c, t=3, head=9):
        self.hline(x0, x1 - head, y - t // 2, c, t)
        self.triangle([(x1 - head, y - head + 0.5), (x1, y + 0.5), (x1 - head, y + head + 0.5)], c)

    def arrow_left(self, x0, x1, y, c, t=3, head=9):
        """From x1 (right) to x0 (tip)."""
        self.hline(x0 + head, x1, y - t // 2, c, t)
        self.triangle([(x0 + head, y - head + 0.5), (x0 + head, y + head + 0.5), (x0, y + 0.5)], c)

    def text(self, x, y, s, c, scale=2):
        for ch in s:
            glyph = FONT[ch]
            for gy, row in enumerate(glyph):
                for gx, bit in enumerate(row):
                    if bit == "#":
                        self.rect(x + gx * scale, y + gy * scale, x + (gx + 1) * scale, y + (gy + 1) * scale, c)
            x += 6 * scale

    def text_center(self, cx, y, s, c, scale=2):
        self.text(cx - text_width(s, scale) // 2, y, s, c, scale)


def text_width(s, scale=2):
    return len(s) * 6 * scale - scale


# A 5x7 bitmap font: the capitals, digits and punctuation the diagrams use.
_GLYPHS = """
A .###. #...# #...# ##### #...# #...# #...#
B ####. #...# #...# ####. #...# #...# ####.
C .###. #...# #.... #.... #.... #...# .###.
D ####. #...# #...# #...# #...# #...# ####.
E ##### #.... #.... ####. #.... #.... #####
F ##### #.... #.... ####. #.... #.... #....
G .###. #...# #.... #.### #...# #...# .####
H #...# #...# #...# ##### #...# #...# #...#
I .###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
J ..### ...#. ...#. ...#. ...#. #..#. .##..
K #...# #..#. #.#.. ##... #.#.. #..#. #...#
L #.... #.... #.... #.... #.... #.... #####
M #...# ##.## #.#.# #.#.# #...# #...# #...#
N #...# #...# ##..# #.#.# #..## #...# #...#
O .###. #...# #...# #...# #...# #...# .###.
P ####. #...# #...# ####. #.... #.... #....
Q .###. #...# #...# #...# #.#.# #..#. .##.#
R ####. #...# #...# ####. #.#.. #..#. #...#
S .#### #.... #.... .###. ....# ....# ####.
T ##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
U #...# #...# #...# #...# #...# #...# .###.
V #...# #...# #...# #...# #...# .#.#. ..#..
W #...# #...# #...# #.#.# #.#.# #.#.# .#.#.
X #...# #...# .#.#. ..#.. .#.#. #...# #...#
Y #...# #...# .#.#. ..#.. ..#.. ..#.. ..#..
Z ##### ....# ...#. ..#.. .#... #.... #####
0 .###. #...# #..## #.#.# ##..# #...# .###.
1 ..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.
2 .###. #...# ....# ...#. ..#.. .#... #####
3 ##### ...#. ..#.. ...#. ....# #...# .###.
4 ...#. ..##. .#.#. #..#. ##### ...#. ...#.
5 ##### #.... ####. ....# ....# #...# .###.
6 ..##. .#... #.... ####. #...# #...# .###.
7 ##### ....# ...#. ..#.. .#... .#... .#...
8 .###. #...# #...# .###. #...# #...# .###.
9 .###. #...# #...# .#### ....# ...#. .##..
- ..... ..... ..... .###. ..... ..... .....
: ..... ..#.. ..#.. ..... ..#.. ..#.. .....
( ...#. ..#.. .#... .#... .#... ..#.. ...#.
) .#... ..#.. ...#. ...#. ...#. ..#.. .#...
, ..... ..... ..... ..... ..#.. ..#.. .#...
. ..... ..... ..... ..... ..... .##.. .##..
/ ....# ....# ...#. ..#.. .#... #.... #....
+ ..... ..#.. ..#.. ##### ..#.. ..#.. .....
= ..... ..... ##### ..... ##### ..... .....
> .#... ..#.. ...#. ....# ...#. ..#.. .#...
< ...#. ..#.. .#... #.... .#... ..#.. ...#.
# .#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.
[ .###. .#... .#... .#... .#... .#... .###.
] .###. ...#. ...#. ...#. ...#. ...#. .###.
! ..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..
_ ..... ..... ..... ..... ..... ..... #####
"""

FONT = {" ": ["....."] * 7}
for _line in _GLYPHS.strip().splitlines():
    _parts = _line.split()
    FONT[_parts[0]] = _parts[1:]
    assert len(_parts) == 8 and all(len(r) == 5 for r in _parts[1:]), _line


# --------------------------------------------------------------------------
# Colours shared by the diagrams (the site's palette)

INK = (15, 23, 42)
MUTED = (71, 85, 105)
WHITE = (255, 255, 255)
PAPER = (248, 250, 252)
TEAL = (13, 148, 136)
TEAL_BG = (204, 251, 241)
BLUE = (37, 99, 235)
BLUE_BG = (219, 234, 254)
AMBER = (217, 119, 6)
AMBER_BG = (254, 243, 199)
SLATE_BG = (226, 232, 240)
ROSE = (190, 18, 60)
ROSE_BG = (255, 228, 230)


def mix(a, b, t):
    return tuple(round(a[i] + (b[i] - a[i]) * t) for i in range(3))


# --------------------------------------------------------------------------
# img/hero.png


def hero():
    W, H = 800, 300
    c = Canvas(W, H)
    horizon = 196
    sky_top, sky_bottom = (12, 20, 46), (20, 96, 122)
    sea_top, sea_bottom = (14, 74, 96), (6, 26, 44)
    moon_x, moon_y, moon_r = 600, 82, 30

    for y in range(H):
        for x in range(W):
            if y < horizon:
                t = y / horizon
                col = mix(sky_top, sky_bottom, t * t)
                d = math.hypot(x - moon_x, y - moon_y)
                glow = max(0.0, 1 - d / 190) ** 2 * 0.35
                col = mix(col, (120, 200, 210), glow)
                if d < moon_r - 0.5:
                    col = (236, 244, 240)
                elif d < moon_r + 0.5:
                    col = mix((236, 244, 240), col, d - (moon_r - 0.5))
            else:
                t = (y - horizon) / (H - horizon)
                col = mix(sea_top, sea_bottom, t)
                # Ripples: thin bright bands that get wider towards the viewer.
                wave = math.sin(x * (0.035 - 0.02 * t) + y * 0.9 + math.sin(x * 0.011) * 3)
                if wave > 0.93 - 0.1 * t:
                    col = mix(col, (90, 170, 180), 0.35 * (1 - t * 0.6))
                # The moon's path on the water.
                dx = abs(x - moon_x)
                reflect = max(0.0, 1 - dx / (18 + 60 * t))
                if reflect > 0 and math.sin(y * 1.7 + x * 0.05) > 0.1:
                    col = mix(col, (200, 230, 225), reflect * 0.55)
            c.set(x, y, col)

    # Stars, placed by a small deterministic generator.
    seed = 12345
    for _ in range(70):
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        sx = seed % W
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        sy = seed % (horizon - 40)
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        b = 0.35 + (seed % 100) / 160
        if math.hypot(sx - moon_x, sy - moon_y) > moon_r + 12:
            c.blend(sx, sy, (255, 255, 255), b)

    # The skiff: hull, mast, mainsail and jib.
    bx, by = 250, horizon + 22
    hull = (18, 24, 38)
    c.triangle([(bx - 120, by - 12), (bx + 130, by - 12), (bx + 96, by + 16)], hull)
    c.triangle([(bx - 120, by - 12), (bx + 96, by + 16), (bx - 92, by + 16)], hull)
    c.rect(bx - 110, by - 15, bx + 122, by - 11, (204, 120, 40))
    c.rect(bx - 2, by - 170, bx + 3, by - 12, hull)
    c.triangle([(bx - 6, by - 166), (bx - 6, by - 22), (bx - 110, by - 22)], (236, 240, 236))
    c.triangle([(bx + 9, by - 156), (bx + 9, by - 22), (bx + 118, by - 22)], (94, 234, 212))
    c.rect(bx - 110, by - 22, bx - 4, by - 19, hull)  # boom
    c.triangle([(bx + 3, by - 176), (bx + 3, by - 166), (bx + 24, by - 171)], (245, 158, 11))  # pennant

    # Reflection of the hull, darker and broken by the ripples.
    for y in range(by + 16, by + 46):
        fade = 1 - (y - by - 16) / 30
        for x in range(bx - 90, bx + 96):
            if math.sin(y * 1.3 + x * 0.07) > -0.2:
                c.blend(x, y, hull, 0.45 * fade)

    # Packets on the wire: a dotted line from the boat to the horizon.
    for i in range(12):
        px = bx + 170 + i * 26
        py = horizon - 4 - int(8 * math.sin(i * 0.7))
        for dy in range(-2, 3):
            for dx in range(-5, 6):
                c.blend(px + dx, py + dy, (245, 158, 11), 0.5 + 0.04 * i)
    return c


# --------------------------------------------------------------------------
# img/architecture.png


def architecture():
    W, H = 760, 560
    c = Canvas(W, H, PAPER)
    c.text_center(W // 2, 18, "ONE SKIFF UNIKERNEL ON ONE HOST", INK, 3)

    # The VM: a frame around rings 3 and 0.
    vm_x0, vm_x1 = 30, 590
    c.round_rect(vm_x0, 62, vm_x1, 392, 14, WHITE, MUTED, 2)
    c.text(vm_x0 + 16, 72, "GUEST VM (ONE VCPU)", MUTED)

    boxes = [
        (96, 146, TEAL_BG, TEAL, "YOUR SERVICE: A RUST CRATE", "#[SKIFF::MAIN] ASYNC FN MAIN"),
        (156, 206, TEAL_BG, TEAL, "SKIFF-NET: SMOLTCP SOCKETS", "TLS (RUSTLS), HTTP/1.1"),
        (216, 266, BLUE_BG, BLUE, "SKIFF-RT: EXECUTOR, HEAP", "CLOCKS, CONSOLE RING, LOG"),
    ]
    for y0, y1, bg, fg, l1, l2 in boxes:
        c.round_rect(50, y0, 470, y1, 8, bg, fg, 2)
        c.text(66, y0 + 9, l1, INK)
        c.text(66, y0 + 29, l2, MUTED)

    c.hline(50, vm_x1 - 20, 286, MUTED, 2, dash=8)
    c.round_rect(50, 306, 318, 374, 8, AMBER_BG, AMBER, 2)
    c.text(66, 316, "SUPERVISOR: GDT,", INK)
    c.text(66, 336, "TSS, IDT, TRAP STUBS", MUTED)
    c.text(66, 354, "A FEW DOZEN INSTR.", MUTED)

    # Ring labels on the right of the VM.
    c.round_rect(488, 96, 574, 266, 8, BLUE, None)
    c.text_center(531, 166, "RING 3", WHITE)
    c.round_rect(488, 306, 574, 374, 8, AMBER, None)
    c.text_center(531, 334, "RING 0", WHITE)

    # The tender and the host below the VM.
    c.round_rect(30, 442, 590, 496, 10, SLATE_BG, INK, 2)
    c.text(46, 452, "TENDER: KVM MONITOR, HYPERCALL SERVER", INK)
    c.text(46, 472, "I/O THREAD, USER NETWORK, SECCOMP", MUTED)
    c.round_rect(30, 510, 590, 546, 10, INK, None)
    c.text(46, 521, "HOST: LINUX KERNEL + KVM, TAP OR SOCKETS", WHITE)

    # Hypercalls: one OUT from ring 3 straight to the tender, past ring 0;
    # network frames through shared rings, with no exit while busy.
    c.arrow_down(346, 266, 442, ROSE)
    c.round_rect(140, 402, 334, 428, 6, ROSE_BG, ROSE, 2)
    c.text(148, 409, "OUT = HYPERCALL", ROSE)
    c.arrow_up(408, 266, 442, TEAL)
    c.arrow_down(432, 266, 442, TEAL)
    c.round_rect(446, 402, 604, 428, 6, TEAL_BG, TEAL, 2)
    c.text(454, 409, "SHARED RINGS", TEAL)

    # Legend on the right.
    lx = 608
    c.text(lx, 72, "BUILT INTO", INK)
    c.text(lx, 90, "ONE IMAGE:", INK)
    for i, s in enumerate(["ONLY THE OS", "PIECES THE", "SERVICE USES", "", "NO LINUX", "NO SHELL", "NO LIBC", "",
                           "W^X PAGES", "SET UP BY", "THE TENDER"]):
        if s:
            c.text(lx, 118 + i * 20, s.replace("^", "/"), MUTED)
    return c


# --------------------------------------------------------------------------
# img/networking.png


def networking():
    W, H = 760, 420
    c = Canvas(W, H, PAPER)
    c.text_center(W // 2, 18, "TWO WAYS ONTO THE NETWORK", INK, 3)

    def guest(y):
        c.round_rect(30, y, 170, y + 84, 10, TEAL_BG, TEAL, 2)
        c.text(44, y + 12, "GUEST", INK)
        c.text(44, y + 34, "SMOLTCP", MUTED)
        c.text(44, y + 56, "SERVICE", MUTED)
        c.arrow_right(170, 210, y + 30, TEAL)
        c.arrow_left(170, 210, y + 56, TEAL)

    # TAP path.
    y = 70
    c.text(30, y - 4, "TAP: --NET SERVICE=TAP0", BLUE)
    y += 20
    guest(y)
    c.round_rect(210, y, 460, y + 84, 10, SLATE_BG, INK, 2)
    c.text(226, y + 12, "TENDER", INK)
    c.text(226, y + 34, "I/O THREAD", MUTED)
    c.text(226, y + 56, "RINGS <> TAP", MUTED)
    c.arrow_right(460, 496, y + 30, BLUE)
    c.arrow_left(460, 496, y + 56, BLUE)
    c.round_rect(496, y, 746, y + 84, 10, BLUE_BG, BLUE, 2)
    c.text(510, y + 12, "TAP0 ON THE HOST", INK)
    c.text(510, y + 34, "ROOT, BRIDGES,", MUTED)
    c.text(510, y + 56, "YOUR ADDRESSES", MUTED)

    c.hline(30, 746, 206, MUTED, 2, dash=8)

    # User network path.
    y = 234
    c.text(30, y - 4, "USER: --NET SERVICE=USER (THE DEFAULT)", TEAL)
    y += 20
    guest(y)
    c.round_rect(210, y, 460, y + 124, 10, SLATE_BG, INK, 2)
    c.text(226, y + 12, "TENDER: USERNET", INK)
    c.text(226, y + 36, "GATEWAY 10.0.2.2", MUTED)
    c.text(226, y + 56, "DHCP    10.0.2.15", MUTED)
    c.text(226, y + 76, "DNS     10.0.2.3", MUTED)
    c.text(226, y + 96, "TCP/UDP RELAYS", MUTED)
    c.arrow_right(460, 496, y + 30, AMBER)
    c.arrow_left(460, 496, y + 56, AMBER)
    c.round_rect(496, y, 746, y + 84, 10, AMBER_BG, AMBER, 2)
    c.text(510, y + 12, "127.0.0.1:8007", INK)
    c.text(510, y + 34, "--PUBLISH 8007:7", MUTED)
    c.text(510, y + 56, "NO ROOT, NO SET-UP", MUTED)
    return c


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    site = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "site")
    img = os.path.join(site, "img")
    os.makedirs(img, exist_ok=True)
    for name, draw in [("hero.png", hero), ("architecture.png", architecture), ("networking.png", networking)]:
        canvas = draw()
        size = write_png(os.path.join(img, name), canvas.w, canvas.h, canvas.px)
        print(f"img/{name}: {canvas.w}x{canvas.h}, {size} bytes")


if __name__ == "__main__":
    main()
