from services.transcoder.service import main

main()
