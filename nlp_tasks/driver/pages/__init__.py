"""The run report's two pages for people: one per run (`run_page.py`) and the index of all runs (`index_page.py`)."""
