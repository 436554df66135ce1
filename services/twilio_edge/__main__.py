from services.twilio_edge.service import main

main()
