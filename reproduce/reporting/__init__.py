"""Results into frames, tables, plots, the HTML report and the paper's figures."""
