from gotorch.cli import main

main()
