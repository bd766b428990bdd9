from pairuni.cli import main

main()
