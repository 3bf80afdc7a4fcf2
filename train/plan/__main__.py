from kfm.train.plan.cli import main

main()
