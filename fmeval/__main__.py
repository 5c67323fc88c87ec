from fmeval.cli import main

main()
