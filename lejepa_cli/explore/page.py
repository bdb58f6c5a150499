"""The explore page: one self-contained HTML file, no remote scripts, fonts or images.

Every thumbnail is stored once, in a JSON table at the end of the page, and `<img data-t=ID>`
elements take their source from it when the page loads; so an image shown in the gallery, the
map and the outliers costs its bytes once, and the page's size is bounded by the number of
distinct thumbnails (`MAX_THUMBNAILS`).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

MAP_W, MAP_H = 900, 600  # the map's drawing area in SVG units
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
)  # fmt: skip
UNLABELLED = "#b8bec6"
THUMBED = ' class="t"'  # points that show a thumbnail on hover

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;
max-width:1250px;color:#1d2733;padding:0 1em;line-height:1.4}
h1{margin-bottom:0.1em}h2{border-bottom:1px solid #d0d7de;padding-bottom:0.2em;margin-top:1.6em}
.sub{color:#57606a;margin-top:0}nav a{margin-right:1em}
.gallery{border:1px solid #d0d7de;border-radius:6px;padding:0.4em;margin:0.6em 0}
.nrow{display:flex;flex-wrap:wrap;align-items:flex-start;gap:4px}
.who{font-size:0.8em;color:#57606a;margin:0.1em 0}
figure{margin:0;width:84px;font-size:0.7em;text-align:center;overflow-wrap:anywhere}
figure img{width:80px;height:80px;object-fit:contain;background:#f3f5f7;display:block;margin:auto}
figure.q img{outline:3px solid #0969da}figcaption{color:#57606a}
.pairs{display:flex;flex-wrap:wrap;gap:10px}.pair{display:flex;gap:2px;border:1px solid #d0d7de;
border-radius:4px;padding:3px}.grid{display:flex;flex-wrap:wrap;gap:6px}
svg{border:1px solid #d0d7de;background:#fff;max-width:100%;height:auto}
svg circle{stroke:#fff;stroke-width:0.5}svg circle.t{stroke:#1d2733;stroke-width:1}
#tip{position:fixed;display:none;pointer-events:none;background:#fff;border:1px solid #57606a;
border-radius:4px;padding:3px;font-size:0.75em;max-width:200px;z-index:2}
#tip img{width:96px;height:96px;object-fit:contain;display:block}
.legend span{display:inline-block;margin-right:1em}.legend i{display:inline-block;width:0.8em;
height:0.8em;border-radius:50%;margin-right:0.3em}
"""

SCRIPT = """
(function(){
const T=JSON.parse(document.getElementById('thumbs').textContent);
for(const img of document.querySelectorAll('img[data-t]')){img.src=T[+img.dataset.t];}
const svg=document.getElementById('map');const tip=document.getElementById('tip');
if(!svg||!tip)return;const P=JSON.parse(document.getElementById('points').textContent);
const timg=tip.querySelector('img');const ttxt=tip.querySelector('div');
svg.addEventListener('mousemove',function(e){const i=e.target.dataset?e.target.dataset.i:undefined;
if(i===undefined){tip.style.display='none';return;}const p=P[+i];
if(p[1]>=0){timg.src=T[p[1]];timg.style.display='block';}else{timg.style.display='none';}
ttxt.textContent=p[0];tip.style.left=(e.clientX+14)+'px';tip.style.top=(e.clientY+14)+'px';
tip.style.display='block';});
svg.addEventListener('mouseleave',function(){tip.style.display='none';});
})();
"""


@dataclass
class Page:
    """What the page shows; image references are thumbnail ids (None: no thumbnail)."""

    title: str
    subtitle: str
    thumbs: list[str] = field(default_factory=list)  # id -> data URI
    sections: list[str] = field(default_factory=list)  # HTML, in order
    points: list[list[Any]] = field(default_factory=list)  # [path, thumb id or -1]

    def thumb_id(self, uri: str | None, ids: dict[str, int]) -> int | None:
        if uri is None:
            return None
        if uri not in ids:
            ids[uri] = len(self.thumbs)
            self.thumbs.append(uri)
        return ids[uri]


def figure(thumb: int | None, caption: str, title: str, query: bool = False) -> str:
    """One thumbnail with a caption; its full path in the tooltip."""
    img = f'<img alt="" data-t="{thumb}">' if thumb is not None else ""
    cls = ' class="q"' if query else ""
    return (
        f'<figure{cls} title="{html.escape(title)}">{img}'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def gallery(rows: list[tuple[str, str]]) -> str:
    """One query: rows of (model name, figures HTML)."""
    body = "".join(
        (f'<p class="who">{html.escape(who)}</p>' if who else "")
        + f'<div class="nrow">{figs}</div>'
        for who, figs in rows
    )
    return f'<div class="gallery">{body}</div>'


def scatter(coords: list[tuple[float, float]], colours: list[str], thumbed: list[bool]) -> str:
    """An SVG point plot of coordinates already scaled to the drawing area."""
    circles = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{4 if t else 3}" fill="{c}"'
        f'{THUMBED if t else ""} data-i="{i}"/>'
        for i, ((x, y), c, t) in enumerate(zip(coords, colours, thumbed, strict=True))
    )
    return (
        f'<svg id="map" viewBox="0 0 {MAP_W} {MAP_H}" width="{MAP_W}" height="{MAP_H}" '
        f'xmlns="http://www.w3.org/2000/svg">{circles}</svg>'
        '<div id="tip"><img alt=""><div></div></div>'
    )


def legend(names: list[str], colours: list[str]) -> str:
    items = "".join(
        f'<span><i style="background:{c}"></i>{html.escape(n)}</span>'
        for n, c in zip(names, colours, strict=True)
    )
    return f'<p class="legend">{items}</p>'


def _json_script(element_id: str, value: Any) -> str:
    # "</" inside a string would end the script element early
    text = json.dumps(value, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def render(page: Page) -> str:
    return "".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<link rel="icon" href="data:,">',
            f"<title>{html.escape(page.title)}</title>",
            f"<style>{CSS}</style></head><body>",
            f"<h1>{html.escape(page.title)}</h1>",
            f'<p class="sub">{page.subtitle}</p>',
            '<nav><a href="#neighbours">Neighbours</a><a href="#map-section">Map</a>'
            '<a href="#duplicates">Near-duplicates</a><a href="#outliers">Outliers</a>'
            '<a href="#patches">Patch maps</a></nav>',
            *page.sections,
            _json_script("thumbs", page.thumbs),
            _json_script("points", page.points),
            f"<script>{SCRIPT}</script>",
            "</body></html>",
        ]
    )
