"""The stylesheet of the HTML reports (the test bench's and the archive migration's): one look, in the core so
that the API and worker images, which do not ship ``testing/``, can write a report."""

REPORT_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 24px 32px;
       color: #1d1d1f; max-width: 1220px; line-height: 1.45; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 32px 0 8px; border-bottom: 2px solid #eee; }
.meta { color: #555; font-size: 14px; } .note { background: #f3f7fb; border-left: 4px solid #0072B2;
        padding: 10px 14px; font-size: 14px; }
table { border-collapse: collapse; font-size: 14px; margin: 8px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e6e6e6; text-align: right; }
th { background: #f6f6f6; } td:first-child, th:first-child { text-align: left; }
.unit { color: #777; font-size: 12px; } .win { color: #0b7a3b; font-weight: 600; }
.lose { color: #b3261e; font-weight: 600; } tr.failed td { background: #fdecea; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
.plot { background: white; border: 1px solid #e6e6e6; border-radius: 6px; }
.ptitle { font-size: 15px; font-weight: 600; fill: #1d1d1f; } .tick { font-size: 11px; fill: #444; }
.axis { font-size: 13px; fill: #222; }
.crops { display: flex; gap: 10px; flex-wrap: wrap; margin-bottom: 18px; }
.crops figure { margin: 0; } .crops img { width: 256px; height: 256px; image-rendering: pixelated;
        border: 1px solid #ccc; object-fit: contain; background: #f0f0f0; }
figcaption { font-size: 12px; color: #333; max-width: 256px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 4px; }
.scroll { max-height: 520px; overflow: auto; border: 1px solid #eee; }
.scroll th, .scroll td { white-space: nowrap; }
.scroll td.err { text-align: left; max-width: 340px; overflow: hidden; text-overflow: ellipsis; color: #b3261e; }
ul.failures { font-size: 14px; } ul.failures code { color: #b3261e; }
"""
