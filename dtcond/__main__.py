from dtcond.cli import main

main()
