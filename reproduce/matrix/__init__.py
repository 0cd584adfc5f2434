"""A matrix of cells: experiments, cell states, dispatch, the live view, CPU costs."""
