from shelley.cli import main

main()
