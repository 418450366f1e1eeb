"""What runs on the workers: reading the corpus, the annotating actors and their stages, writing parts."""
