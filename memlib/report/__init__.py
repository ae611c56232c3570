"""What a reader sees of a run, one job a module (imports only memlib.config and memlib.analysis):

- figures: stage 4's figures, each with its file and caption; plots, plots_validation: drawing them.
- summary: the headline numbers of summary.json, each with its uncertainty (stage 4).
- prose: the findings in words: caveats, the headline sentence, the rows of the headline table.
- tables: the notebooks' tables.
- artifacts: the run folder's notebooks and JSON files, and how the JSON is written and read.
- html: report.html, the findings first, then each executed notebook with its code hidden.
"""
