"""The rendered HTML report: the findings first, each executed notebook with its code hidden, and an appendix."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any

from ..config import display_path
from .artifacts import ENVIRONMENT_FILE, SCORES_FILE, STAGES, read_json, write_output
from .figures import FIGURES, FINDINGS_FIGURES, figure_path
from .prose import caveats, headline, headline_sentence, validation_rows

STAGE_TITLES = {
    "01_train_subsets": "Stage 1: training models on random subsets",
    "02_estimate": "Stage 2: memorization and influence estimates",
    "03_filter_retrain": "Stage 3: filtering and retraining (marginal utility)",
    "04_figures": "Stage 4: figures and headline numbers",
    "05_validate": "Stage 5: validating the estimates (label noise, peer scores, controlled pairs)",
}


def stage_status(out_dir: Path) -> list[dict[str, Any]]:
    """Per stage: its title, wall time, and status: ok, failed, missing, or stale (run before the stage it uses)."""
    import nbformat

    rows, previous_end = [], None
    for stage in STAGES:
        path = Path(out_dir) / f"{stage}.ipynb"
        row = {"stage": stage, "title": STAGE_TITLES[stage], "duration": None, "status": "missing", "why": ""}
        if path.exists():
            pm = nbformat.read(path, as_version=4).metadata.get("papermill", {})
            start, end = _time(pm.get("start_time")), _time(pm.get("end_time"))
            row["duration"] = pm.get("duration")
            if pm.get("exception"):
                row["status"], row["why"] = "failed", f"open {stage}.ipynb beside this report to see where"
            elif end is None:
                row["status"], row["why"] = "failed", "it did not finish (interrupted?)"
            elif previous_end is not None and start is not None and start < previous_end:
                row["status"], row["why"] = "stale", "it ran before the latest run of the stage before it"
            else:
                row["status"] = "ok"
            previous_end = end or previous_end
        rows.append(row)
    return rows


def _time(text: str | None) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _anchor(stage: str) -> str:
    return "stage-" + stage[:2].lstrip("0")


def _html_cell(html: str):
    """A cell that renders `html` as it is (input hidden): the report's own blocks."""
    import nbformat

    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": html})]
    return cell


def _figure(path: Path, caption: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure style="flex:1 1 30%;margin:0;min-width:280px"><img style="width:100%" '
        f'src="data:image/png;base64,{data}" alt="{html.escape(caption)}"><figcaption style="font-size:0.85em;'
        f'color:#444">{html.escape(caption)}</figcaption></figure>'
    )


def _banner(text: str, color: str) -> str:
    return (
        f'<div style="border:3px solid {color};background:{color}1a;padding:0.8em 1em;margin:0.8em 0;'
        f'font-size:1.05em"><strong>{text}</strong></div>'
    )


def _html_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(
        f"<tr><th style='text-align:left;vertical-align:top'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table>{body}</table>"


def _findings(out_dir: Path, title: str, stages: list[dict], summary: dict | None) -> str:
    parts = [f'<h1 id="findings">{html.escape(title)}</h1>']
    toc = (
        [("findings", "Findings")]
        + [(_anchor(r["stage"]), r["title"]) for r in stages]
        + [("appendix", "Appendix: configuration and environment")]
    )
    parts.append(
        '<nav style="margin-bottom:1em"><strong>Contents:</strong> '
        + " · ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in toc)
        + "</nav>"
    )
    bad = [r for r in stages if r["status"] != "ok"]
    if bad:
        listed = "; ".join(
            f"{r['title']} {r['status']} ({r['why']})" if r["why"] else f"{r['title']} {r['status']}" for r in bad
        )
        parts.append(
            _banner(
                f"This report does not show one consistent run: {html.escape(listed)}. The headline and figures "
                f"may come from an earlier run. Rerun <code>make reproduce PROFILE={html.escape(out_dir.name)}</code> "
                "(finished models are kept).",
                "#c0392b",
            )
        )
    if summary is None:
        parts.append(_banner("No summary.json: stage 4 has not written its headline figures.", "#c0392b"))
        return "\n".join(parts)
    for note in caveats(summary):
        parts.append(_banner(html.escape(note), "#d35400"))
    parts.append(f'<p style="font-size:1.15em;line-height:1.5">{html.escape(headline_sentence(summary))}</p>')
    parts.append(
        '<div style="display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start">'
        + "".join(_figure(figure_path(out_dir, name), FIGURES[name].caption) for name in FINDINGS_FIGURES)
        + "</div>"
    )
    checks = read_json(out_dir / "validation.json") if (out_dir / "validation.json").exists() else {}
    parts.append("<h2>Headline figures</h2>" + _html_table(headline(summary) + validation_rows(checks)))
    where = " and <code>validation.json</code> (stage 5)" if checks else ""
    table = SCORES_FILE if (out_dir / SCORES_FILE).exists() else None
    per_example = (
        f' Every training example, in the dataset\'s order: <a href="{table}"><code>{table}</code></a> (its labels, '
        "mem and its standard error, each peer score, the test example it influences most, its pairs)."
        if table
        else ""
    )
    parts.append(f"<p>All of them, in <code>summary.json</code>{where} beside this report.{per_example}</p>")
    return "\n".join(parts)


def _appendix(out_dir: Path, stages: list[dict]) -> str:
    parts = ['<h1 id="appendix">Appendix: configuration and environment</h1>']
    run_log = [
        (r["title"], f"{r['status']}" + ("" if r["duration"] is None else f", {r['duration']:.0f} s")) for r in stages
    ]
    parts.append(
        "<details><summary><strong>Stages: status and wall time</strong></summary>"
        + _html_table(run_log)
        + "</details>"
    )
    params = out_dir / "parameters.yaml"
    if params.exists():
        import yaml

        cfg = yaml.safe_load(params.read_text()) or {}
        rows = [(k, "null" if v is None else str(v)) for k, v in cfg.items()]
        parts.append(
            "<details><summary><strong>Configuration</strong> (every parameter, as the notebooks got it)"
            "</summary>" + _html_table(rows) + "</details>"
        )
    env_file = out_dir / ENVIRONMENT_FILE
    if env_file.exists():
        env = json.loads(env_file.read_text())
        made = [
            ("commit", env.get("commit", "unknown")),
            ("training device", f"{env.get('training_device')} · accelerator: {env.get('accelerator')}"),
            ("training precision", str(env.get("training_precision", "—"))),
            ("matrix layout", str(env.get("stacked_layout", "—"))),
            ("processor", f"{env.get('cpu_cores')} cores · {env.get('platform')} · Python {env.get('python')}"),
            ("CUDA", env.get("cuda") or "— (no GPU used)"),
            ("libraries", " · ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())),
        ]
        parts.append(
            "<details><summary><strong>Made with</strong> (as recorded by stage 1, in "
            f"<code>{ENVIRONMENT_FILE}</code>)</summary>" + _html_table(made) + "</details>"
        )
    return "\n".join(parts)


def render_report(out_dir: Path, title: str | None = None) -> Path:
    """One HTML page: findings first (headline, key figures), a table of contents, then each executed notebook
    with code hidden, and configuration and environment in a collapsed appendix.

    A stage that failed, did not finish, or ran before the stage it builds on puts a banner at the top.
    """
    import nbformat
    from nbconvert import HTMLExporter

    out_dir = Path(out_dir)
    missing = [s for s in STAGES if not (out_dir / f"{s}.ipynb").exists()]
    if len(missing) == len(STAGES):
        raise FileNotFoundError(f"{display_path(out_dir)} has no executed notebooks: run `make reproduce` first")
    stages = stage_status(out_dir)
    summary_file = out_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    title = title or f"Memorization and influence: {out_dir.name}"
    cells = [_html_cell(_findings(out_dir, title, stages, summary))]
    for row in stages:
        cells += _stage_cells(out_dir, row)
    cells.append(_html_cell(_appendix(out_dir, stages)))
    report = nbformat.v4.new_notebook(cells=cells)
    report.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(report)
    page = body.replace("<title>Notebook</title>", f"<title>{html.escape(title)}</title>")
    return write_output(out_dir / "report.html", lambda f: f.write(page.encode()))


def _stage_cells(out_dir: Path, row: dict) -> list:
    """A stage's part of the report: its heading (with a banner unless it is ok), then its notebook's cells
    without the notebook's title, the appendix cells or stderr."""
    import nbformat

    stage = row["stage"]
    heading = f'<h1 id="{_anchor(stage)}">{html.escape(row["title"])}</h1>'
    if row["status"] != "ok":
        heading += _banner(
            f"This stage {row['status']}" + (f": {html.escape(row['why'])}" if row["why"] else ""), "#c0392b"
        )
    cells = [_html_cell(heading + f"<p><em>Notebook: <code>{stage}.ipynb</code></em></p>")]
    if row["status"] == "missing":
        return cells
    nb = nbformat.read(out_dir / f"{stage}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("# "):
            continue  # each notebook's own title; the stage heading replaces it
        if "appendix" in cell.metadata.get("tags", []) or "injected-parameters" in cell.metadata.get("tags", []):
            continue  # configuration and environment: in the appendix
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if not _is_noise(o)]
        cells.append(cell)
    return cells


def _is_noise(output: dict) -> bool:
    """Output a reader should not see: anything on stderr (progress bars, library warnings)."""
    return output.get("output_type") == "stream" and output.get("name") == "stderr"
