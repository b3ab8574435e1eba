"""From what a client asks for to the job command it becomes: request bodies (:mod:`.requests`) and the
checks and command of each job kind (:mod:`.build`), shared by the REST routes and the study runner."""
