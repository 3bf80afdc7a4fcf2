from kfm.data_pipeline.staged.cli import main

main()
