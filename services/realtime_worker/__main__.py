from services.realtime_worker.service import main

main()
